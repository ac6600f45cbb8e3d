//! Hostnames and hostname patterns: validation, coverage and overlap.

/// Normalises and validates a hostname or `*.suffix` pattern: lower-case,
/// DNS labels of letters, digits and `-`, at most 253 characters.
pub fn normalize(host: &str) -> Result<String, String> {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    let body = lower.strip_prefix("*.").unwrap_or(&lower);
    let valid = !body.is_empty()
        && lower.len() <= 253
        && body.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if valid {
        Ok(lower)
    } else {
        Err(format!(
            "{host:?} is not a hostname (DNS labels of letters, digits and '-', optionally after a leading '*.')"
        ))
    }
}

/// Whether `pattern` covers `host`: they are equal, or `pattern` is
/// `*.suffix` and `host` (itself possibly a wildcard) ends in `.suffix`
/// with at least one more label.
pub fn covers(pattern: &str, host: &str) -> bool {
    if pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            let host_body = host.strip_prefix('*').unwrap_or(host);
            host_body.len() > suffix.len() && host_body.ends_with(suffix)
                || host.starts_with('*') && host_body == suffix && host != pattern
        }
        None => false,
    }
}

/// Whether some hostname could match both patterns.
pub fn overlap(a: &str, b: &str) -> bool {
    covers(a, b) || covers(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_rejects() {
        assert_eq!(normalize("API.Example.com.").as_deref(), Ok("api.example.com"));
        assert_eq!(normalize("*.example.com").as_deref(), Ok("*.example.com"));
        assert!(normalize("*").is_err());
        assert!(normalize("a..b").is_err());
        assert!(normalize("a_b.com").is_err());
        assert!(normalize("-a.com").is_err());
        assert!(normalize("a.*.com").is_err());
    }

    #[test]
    fn wildcard_coverage() {
        assert!(covers("*.a.com", "x.a.com"));
        assert!(covers("*.a.com", "x.y.a.com"));
        assert!(covers("*.a.com", "*.b.a.com"));
        assert!(covers("*.a.com", "*.a.com"));
        assert!(!covers("*.a.com", "a.com"));
        assert!(!covers("*.a.com", "xa.com"));
        assert!(!covers("x.a.com", "*.a.com"));
        assert!(overlap("x.a.com", "*.a.com"));
        assert!(!overlap("x.a.com", "y.a.com"));
    }
}

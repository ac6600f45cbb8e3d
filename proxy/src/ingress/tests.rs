use super::*;

fn norm(path: &str) -> Result<String, PathError> {
    normalize_path(path, true).map(Cow::into_owned)
}

#[test]
fn paths_are_normalised_once() {
    assert_eq!(norm("/v1/users"), Ok("/v1/users".into()));
    assert_eq!(norm("/"), Ok("/".into()));
    assert_eq!(norm("/public/../admin"), Ok("/admin".into()));
    assert_eq!(norm("/public/%2e%2e/admin"), Ok("/admin".into()));
    assert_eq!(norm("/public/%2E%2E/admin"), Ok("/admin".into()));
    assert_eq!(norm("/a/./b/."), Ok("/a/b/".into()));
    assert_eq!(norm("/a/b/.."), Ok("/a/".into()));
    assert_eq!(norm("/a//b///c"), Ok("/a/b/c".into()));
    assert_eq!(norm("/a/b/"), Ok("/a/b/".into()));
    assert_eq!(norm("/%7Euser/%41"), Ok("/~user/A".into()));
    assert_eq!(norm("/.well-known/x"), Ok("/.well-known/x".into()));
}

#[test]
fn encoded_separators_stay_encoded() {
    assert_eq!(norm("/files/a%2fb"), Ok("/files/a%2Fb".into()));
    assert_eq!(norm("/files/a%5Cb"), Ok("/files/a%5Cb".into()));
    assert_eq!(norm("/public/..%2Fadmin"), Ok("/public/..%2Fadmin".into()));
    assert_eq!(norm("/a%20b"), Ok("/a%20b".into()));
}

#[test]
fn climbing_above_the_root_and_bad_escapes_are_errors() {
    assert_eq!(norm("/.."), Err(PathError::AboveRoot));
    assert_eq!(norm("/../x"), Err(PathError::AboveRoot));
    assert_eq!(norm("/a/../../x"), Err(PathError::AboveRoot));
    assert_eq!(norm("/%2e%2e/x"), Err(PathError::AboveRoot));
    assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
    assert_eq!(norm("/a%2"), Err(PathError::BadEscape));
    assert_eq!(norm("a/b"), Err(PathError::NotAbsolute));
}

#[test]
fn slashes_can_be_kept() {
    assert_eq!(normalize_path("/a//b", false).map(Cow::into_owned), Ok("/a//b".into()));
    assert_eq!(normalize_path("/a//../b", false).map(Cow::into_owned), Ok("/a/b".into()));
}

#[test]
fn unchanged_paths_are_borrowed() {
    assert!(matches!(normalize_path("/v1/users/7", true), Ok(Cow::Borrowed(_))));
}

fn parts(req: http::Request<()>) -> request::Parts {
    req.into_parts().0
}

fn get(uri: &str) -> request::Builder {
    http::Request::get(uri)
}

#[test]
fn authority_rules() {
    // No Host on HTTP/1.1.
    let mut p = parts(get("/x").body(()).expect("request"));
    assert!(admit(&mut p).is_err());
    // HTTP/1.0 may omit it.
    let mut p = parts(get("/x").version(Version::HTTP_10).body(()).expect("request"));
    assert_eq!(admit(&mut p).expect("admitted").host, "");
    // Two Hosts.
    let mut p = parts(get("/x").header("host", "a").header("host", "b").body(()).expect("request"));
    assert!(admit(&mut p).is_err());
    // Userinfo.
    let mut p = parts(get("/x").header("host", "u@a.test").body(()).expect("request"));
    assert!(admit(&mut p).is_err());
    // Absolute form wins and replaces Host.
    let mut p = parts(get("http://a.test:8080/x").header("host", "b.test").body(()).expect("request"));
    let admitted = admit(&mut p).expect("admitted");
    assert_eq!(admitted.host, "a.test");
    assert_eq!(p.headers.get("host").expect("host"), "a.test:8080");
    assert_eq!(p.uri, "/x");
    // HTTP/2 :authority and host must agree.
    let mut p =
        parts(get("https://a.test/x").version(Version::HTTP_2).header("host", "b.test").body(()).expect("request"));
    assert!(admit(&mut p).is_err());
    let mut p =
        parts(get("https://A.test/x").version(Version::HTTP_2).header("host", "a.test").body(()).expect("request"));
    assert_eq!(admit(&mut p).expect("admitted").host, "a.test");
}

#[test]
fn hop_by_hop_and_upgrades() {
    let mut p = parts(
        get("/x")
            .header("host", "a")
            .header("connection", "x-api-version, upgrade")
            .header("x-api-version", "2")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAAQAAP__")
            .header("proxy-authorization", "Basic eA==")
            .body(())
            .expect("request"),
    );
    let admitted = admit(&mut p).expect("admitted");
    assert!(!admitted.websocket);
    for name in ["connection", "x-api-version", "upgrade", "http2-settings", "proxy-authorization"] {
        assert!(!p.headers.contains_key(name), "{name} was kept");
    }
    let mut p = parts(
        get("/x")
            .header("host", "a")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket, h2c")
            .body(())
            .expect("request"),
    );
    assert!(admit(&mut p).expect("admitted").websocket);
    assert_eq!(p.headers.get("upgrade").expect("upgrade"), "websocket");
}

#[test]
fn transfer_codings_other_than_chunked_are_refused() {
    let mut p = parts(
        http::Request::post("/x").header("host", "a").header("transfer-encoding", "gzip, chunked").body(()).expect("r"),
    );
    assert!(matches!(admit(&mut p), Err(ProxyError::NotImplemented(_))));
}

#[test]
fn http2_cookies_are_joined() {
    let mut p = parts(
        get("https://a/x")
            .version(Version::HTTP_2)
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .expect("request"),
    );
    admit(&mut p).expect("admitted");
    assert_eq!(p.headers.get_all("cookie").iter().count(), 1);
    assert_eq!(p.headers.get("cookie").expect("cookie"), "a=1; b=2");
}

#[test]
fn prefixes_map_onto_unmerged_paths() {
    assert_eq!(segments_end("//api///v1//users", 2), "//api///v1".len());
    assert_eq!(segments_end("/api/v1", 0), 0);
    assert_eq!(segments_end("/api", 1), 4);
}

#[test]
fn the_client_is_the_first_untrusted_hop_from_the_right() {
    let trusted: Vec<ipnet::IpNet> = ["10.0.0.0/8", "127.0.0.1/32"].iter().map(|n| n.parse().expect("cidr")).collect();
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7, 203.0.113.9, 10.1.2.3"));
    let local: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
    let stranger: std::net::IpAddr = "192.0.2.1".parse().expect("ip");
    assert_eq!(client_ip(local, &headers, &trusted).to_string(), "203.0.113.9");
    assert_eq!(client_ip(stranger, &headers, &trusted), stranger);
    assert_eq!(client_ip(local, &headers, &[]), local);
    headers.insert("x-forwarded-for", HeaderValue::from_static("10.9.9.9, 10.1.2.3"));
    assert_eq!(client_ip(local, &headers, &trusted).to_string(), "10.9.9.9");
}

#[test]
fn a_clients_identity_headers_are_removed() {
    let mut p = parts(
        get("/x")
            .header("host", "a")
            .header("x-sluice-tenant", "other")
            .header("x-sluice-app", "other-app")
            .header("x-sluicer", "kept")
            .body(())
            .expect("request"),
    );
    admit(&mut p).expect("admitted");
    assert!(!p.headers.contains_key("x-sluice-tenant") && !p.headers.contains_key("x-sluice-app"));
    assert_eq!(p.headers.get("x-sluicer").expect("kept"), "kept");
    // What the gateway sends instead, once a stage knows the caller.
    let caller = crate::exchange::Caller::new(
        "team-a".into(),
        "billing".into(),
        "team-a/billing".into(),
        None,
        crate::exchange::AuthMethod::ApiKey,
    );
    caller.to_headers(&mut p.headers);
    assert_eq!(p.headers.get("x-sluice-tenant").expect("tenant"), "team-a");
    assert_eq!(p.headers.get("x-sluice-app").expect("app"), "billing");
    assert_eq!(p.headers.get("x-sluice-auth").expect("auth"), "api-key");
}

//! `sluice-proxy`: the data plane binary.
//!
//! Standalone: `sluice-proxy --config-dir DIR` compiles the YAML resources
//! in DIR, serves them, and applies changes to DIR within a second.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sluice_proxy::{Gateway, Limits, ServerConfig, calllog, standalone};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Not an error: `--version` was asked for.
const VERSION: &str = "--version";

const USAGE: &str = "\
sluice-proxy: Sluice's API gateway data plane

USAGE:
    sluice-proxy --config-dir DIR [OPTIONS]

OPTIONS:
    --config-dir DIR           folder of YAML resources to serve and watch (standalone mode)
    --listen ADDR              plain HTTP listener (repeatable; default 127.0.0.1:8080)
    --listen-tls ADDR          TLS listener, certificates from the config by SNI (repeatable)
    --admin ADDR               admin listener: /metrics /healthz /readyz /status (default 127.0.0.1:9901)
    --workers N                worker threads (default: one per CPU)
    --max-body-bytes N         largest request body (default 10485760)
    --max-header-bytes N       largest request head, bytes; larger gets 431 (default 65536)
    --max-headers N            most header fields in a request head; more gets 431 (default 100)
    --max-uri-bytes N          longest request target (path and query); longer gets 414 (default 8192)
    --header-read-timeout MS   time from accept to a full first request head, ms (default 10000)
    --keep-alive-timeout MS    longest idle time between requests on a connection, ms (default 75000)
    --body-idle-timeout MS     longest silence inside a request body, ms (408 after it; default 60000)
    --max-connections N        client connections per worker; more get 503 (default 16384)
    --tls-default-host HOST    certificate for TLS clients without SNI (default: refuse them)
    --trusted-proxies CIDRS    comma-separated peers whose X-Forwarded-For is believed (default: none)
    --proxy-protocol           every traffic connection starts with a PROXY protocol v2 header
    --shutdown-grace MS        time in-flight requests get at SIGTERM, ms (default 30000)
    --cache-max-bytes N        bytes of answers the response cache keeps (default 67108864)
    --redis-url URL            Redis shared by every proxy: rate limits hold fleet-wide (default: per proxy)
    --redis-timeout MS         longest wait for Redis in a request, ms (default 5)
    --redis-failure open|closed  when Redis cannot be asked: each proxy's own limits (open, default) or 503
    --call-log on|off          one JSON line per request on stdout (default on)
    -V, --version              the version
    -h, --help                 this text
";

#[derive(Debug)]
struct Args {
    config_dir: PathBuf,
    server: ServerConfig,
    limits: Limits,
    call_log: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut config_dir = None;
    let mut http = Vec::new();
    let mut https = Vec::new();
    let mut admin: SocketAddr = "127.0.0.1:9901".parse().map_err(|e| format!("{e}"))?;
    let mut workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut limits = Limits::default();
    let mut call_log = true;
    let mut tls_default_host = None;
    // `--flag=value` is the same as `--flag value`.
    let mut args = std::env::args().skip(1).flat_map(|arg| match arg.split_once('=') {
        Some((flag, value)) if flag.starts_with("--") => vec![flag.to_owned(), value.to_owned()],
        _ => vec![arg],
    });
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let addr =
            |name: &str, v: String| v.parse::<SocketAddr>().map_err(|e| format!("{name} {v:?}: {e} (use IP:PORT)"));
        let number = |name: &str, v: String| v.parse::<u64>().map_err(|e| format!("{name} {v:?}: {e}"));
        match flag.as_str() {
            "--config-dir" => config_dir = Some(PathBuf::from(value("--config-dir")?)),
            "--listen" => http.push(addr("--listen", value("--listen")?)?),
            "--listen-tls" => https.push(addr("--listen-tls", value("--listen-tls")?)?),
            "--admin" => admin = addr("--admin", value("--admin")?)?,
            "--workers" => workers = number("--workers", value("--workers")?)?.max(1) as usize,
            "--max-body-bytes" => limits.max_body_bytes = number("--max-body-bytes", value("--max-body-bytes")?)?,
            "--cache-max-bytes" => limits.cache_max_bytes = number("--cache-max-bytes", value("--cache-max-bytes")?)?,
            "--redis-url" => limits.redis_url = Some(value("--redis-url")?),
            "--redis-timeout" => limits.redis_timeout_ms = number("--redis-timeout", value("--redis-timeout")?)?,
            "--redis-failure" => {
                limits.redis_fail_open = match value("--redis-failure")?.as_str() {
                    "open" => true,
                    "closed" => false,
                    other => return Err(format!("--redis-failure: {other:?} is neither open nor closed")),
                }
            }
            "--max-headers" => limits.max_headers = number("--max-headers", value("--max-headers")?)?.max(1) as usize,
            "--max-uri-bytes" => {
                limits.max_uri_bytes = number("--max-uri-bytes", value("--max-uri-bytes")?)?.max(1) as usize
            }
            "-V" | "--version" => return Err(VERSION.into()),
            "--max-header-bytes" => {
                limits.max_header_bytes = number("--max-header-bytes", value("--max-header-bytes")?)? as usize
            }
            "--header-read-timeout" => {
                limits.header_read_timeout_ms = number("--header-read-timeout", value("--header-read-timeout")?)?
            }
            "--shutdown-grace" => limits.shutdown_grace_ms = number("--shutdown-grace", value("--shutdown-grace")?)?,
            "--keep-alive-timeout" => {
                limits.keep_alive_timeout_ms = number("--keep-alive-timeout", value("--keep-alive-timeout")?)?
            }
            "--body-idle-timeout" => {
                limits.body_idle_timeout_ms = number("--body-idle-timeout", value("--body-idle-timeout")?)?
            }
            "--max-connections" => {
                limits.max_connections = number("--max-connections", value("--max-connections")?)?.max(1) as usize
            }
            "--tls-default-host" => tls_default_host = Some(value("--tls-default-host")?),
            "--proxy-protocol" => limits.proxy_protocol = true,
            "--trusted-proxies" => {
                for cidr in value("--trusted-proxies")?.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    let net = cidr
                        .parse::<ipnet::IpNet>()
                        .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| format!("--trusted-proxies {cidr:?}: not an address or CIDR (10.0.0.0/8)"))?;
                    limits.trusted_proxies.push(net);
                }
            }
            "--call-log" => {
                call_log = match value("--call-log")?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--call-log {other:?}: use on or off")),
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let config_dir = config_dir.ok_or("--config-dir is required (the proxy's standalone mode)")?;
    if http.is_empty() && https.is_empty() {
        http.push("127.0.0.1:8080".parse().map_err(|e| format!("{e}"))?);
    }
    if let Some(clash) = http.iter().chain(&https).find(|a| **a == admin) {
        return Err(format!("--admin {admin} is also a traffic listener ({clash}): use another port"));
    }
    let server = ServerConfig { http, https, admin, workers, tls_default_host };
    Ok(Args { config_dir, server, limits, call_log })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) if message.is_empty() => {
            sluice_proxy::log::stdout(USAGE);
            return ExitCode::SUCCESS;
        }
        Err(message) if message == VERSION => {
            sluice_proxy::log::stdout(&format!("sluice-proxy {}\n", env!("CARGO_PKG_VERSION")));
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            sluice_proxy::say!("{message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !args.config_dir.is_dir() {
        sluice_proxy::say!("--config-dir {}: not a folder", args.config_dir.display());
        return ExitCode::from(2);
    }
    calllog::set_enabled(args.call_log);
    let gateway = Gateway::new(args.limits, format!("standalone:{}", args.config_dir.display()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = match standalone::watch(gateway.clone(), args.config_dir.clone(), stop.clone()) {
        Ok((watcher, _)) => watcher,
        Err(e) => {
            sluice_proxy::say!("cannot start the config thread: {e}");
            return ExitCode::FAILURE;
        }
    };

    let running = match sluice_proxy::start(gateway.clone(), &args.server) {
        Ok(running) => running,
        Err(e) => {
            sluice_proxy::say!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for addr in &running.http {
        sluice_proxy::say!("listening on http://{addr}");
    }
    for addr in &running.https {
        sluice_proxy::say!("listening on https://{addr}");
    }
    sluice_proxy::say!("admin on http://{}", running.admin);

    if let Err(e) = wait_for_signal() {
        sluice_proxy::say!("cannot wait for signals: {e}");
    }
    sluice_proxy::say!("shutting down: no new connections; in-flight requests may finish");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    running.shutdown();
    let _ = watcher.join();
    calllog::finish();
    sluice_proxy::say!("stopped");
    ExitCode::SUCCESS
}

fn wait_for_signal() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        Ok(())
    })
}

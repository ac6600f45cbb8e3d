//! Standalone mode as a new user meets it: config loading, status,
//! readiness and the process itself, over real sockets and files.

mod support;

use support::*;

const USERS: &str = "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: { name: users }\nspec:\n  matches: [{ path: { type: PathPrefix, value: /users } }]\n  backend: { directResponse: { status: 200, body: users } }\n";

#[tokio::test]
async fn a_misspelt_field_is_an_error_not_a_catch_all() {
    let proxy = Proxy::start(USERS);
    assert_eq!(get(&proxy.url("/users")).await.status, 200);
    assert_eq!(get(&proxy.url("/admin")).await.status, 404);
    proxy.reload(&USERS.replace("matches", "matchs")).await;
    let report = proxy.gateway.report.load();
    let reload = report.last_reload.as_ref().expect("a reload");
    assert_eq!(reload.outcome, "rejected");
    assert!(
        reload.problems.iter().any(|p| p.contains("routes.yaml: document 1: spec.matchs: unknown field")),
        "{:?}",
        reload.problems
    );
    // The last good config serves: /admin is still not routed.
    assert_eq!(get(&proxy.url("/users")).await.status, 200);
    assert_eq!(get(&proxy.url("/admin")).await.status, 404);
}

/// Polls `url` until it answers `body`, for at most five seconds.
async fn until_body(url: &str, body: &str) -> bool {
    for _ in 0..250 {
        if let Ok(Ok(response)) =
            tokio::time::timeout(std::time::Duration::from_millis(500), client().get(url.parse().expect("uri"))).await
        {
            use http_body_util::BodyExt;
            if let Ok(bytes) = response.into_body().collect().await
                && bytes.to_bytes() == body.as_bytes()
            {
                return true;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_full_stderr_stops_neither_the_proxy_nor_its_watcher() {
    let dir = TempDir::new();
    dir.write("routes.yaml", USERS);
    let (listen, admin) = (closed_port(), closed_port());
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
        .args(["--config-dir", &dir.0.display().to_string(), "--listen", &listen.to_string()])
        .args(["--admin", &admin.to_string(), "--call-log", "off"])
        .stderr(full)
        .spawn()
        .expect("start sluice-proxy");
    let url = format!("http://{listen}/users");
    assert!(until_body(&url, "users").await, "serving with a full stderr");
    // An edit is still applied (and its log line dropped).
    dir.write("routes.yaml", &USERS.replace("body: users", "body: edited"));
    assert!(until_body(&url, "edited").await, "the watcher still applies edits");
    let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().expect("exit");
    assert_eq!(status.code(), Some(0), "a clean exit, never a panic (101)");
}

#[test]
fn usage_errors_exit_2_even_with_a_full_stderr() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
        .arg("--no-such-flag")
        .stderr(full)
        .status()
        .expect("run");
    assert_eq!(status.code(), Some(2));
}

#[test]
fn the_cache_size_is_a_flag_and_a_bad_value_names_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
        .args(["--config-dir", "/nonexistent", "--cache-max-bytes", "lots"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cache-max-bytes"), "{out:?}");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-proxy")).arg("--help").output().expect("run");
    assert!(String::from_utf8_lossy(&help.stdout).contains("--cache-max-bytes N"), "{help:?}");
}

#[tokio::test]
async fn readiness_and_status_tell_the_truth_about_the_folder() {
    // A folder with a file that does not parse is not a config: not ready.
    let proxy = Proxy::start("apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: [not, a, map]\n");
    assert_eq!(get(&proxy.admin_url("/readyz")).await.status, 503);
    let status = get(&proxy.admin_url("/status")).await.json();
    assert!(status["loadErrors"].as_array().is_some_and(|e| e.len() == 1), "{status}");
    // Fixed: ready.
    proxy.reload(USERS).await;
    assert_eq!(get(&proxy.admin_url("/readyz")).await.status, 200);
    assert_eq!(get(&proxy.url("/users")).await.status, 200);
    let metrics = get(&proxy.admin_url("/metrics")).await.text();
    assert!(metrics.contains("sluice_config_current 1"), "{metrics}");
    // A later bad edit: still ready on the last good config, and /status
    // and the metric say the folder is not what is served.
    proxy.reload("kind: [broken\n").await;
    assert_eq!(get(&proxy.admin_url("/readyz")).await.status, 200);
    assert_eq!(get(&proxy.url("/users")).await.status, 200);
    let status = get(&proxy.admin_url("/status")).await.json();
    assert!(status["loadErrors"].as_array().is_some_and(|e| e.len() == 1), "{status}");
    assert_eq!(status["lastReload"]["outcome"], "rejected");
    let metrics = get(&proxy.admin_url("/metrics")).await.text();
    assert!(metrics.contains("sluice_config_current 0"), "{metrics}");
    // Good again.
    proxy.reload(USERS).await;
    let status = get(&proxy.admin_url("/status")).await.json();
    assert_eq!(status["loadErrors"].as_array().map(Vec::len), Some(0), "{status}");
    assert!(get(&proxy.admin_url("/metrics")).await.text().contains("sluice_config_current 1"));
}

#[tokio::test]
async fn an_empty_folder_is_not_ready() {
    let dir = TempDir::new();
    let gateway = sluice_proxy::Gateway::new(sluice_proxy::Limits::default(), "test");
    sluice_proxy::standalone::apply(&gateway, sluice_proxy::standalone::load(&dir.0));
    assert!(!gateway.is_ready());
    dir.write("routes.yaml", USERS);
    sluice_proxy::standalone::apply(&gateway, sluice_proxy::standalone::load(&dir.0));
    assert!(gateway.is_ready());
}

#[tokio::test]
async fn a_file_written_in_place_is_never_served_half_written() {
    let proxy = Proxy::start(USERS);
    let file = proxy.dir.0.join("routes.yaml");
    let url = proxy.url("/users");
    // What `cat > routes.yaml` and many editors do: truncate, then write.
    // The empty file must not become a config with no routes.
    std::fs::write(&file, "").expect("truncate");
    let until = std::time::Instant::now() + std::time::Duration::from_millis(800);
    while std::time::Instant::now() < until {
        assert_eq!(get(&url).await.status, 200, "served from a truncated file");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A slow writer: half the file, a pause, the rest.
    std::fs::write(&file, &USERS[..USERS.len() / 2]).expect("write half");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await; // a writer between two writes
    std::fs::write(&file, USERS.replace("body: users", "body: rewritten")).expect("write");
    assert!(until_body(&url, "rewritten").await, "the complete file is served");
    // A file really emptied on purpose is applied once it stays empty.
    std::fs::write(&file, "").expect("empty");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    while get(&url).await.status == 200 {
        assert!(std::time::Instant::now() < deadline, "an emptied file is applied after the hold");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_metrics_exposition_passes_promtool_and_forgets_removed_routes() {
    let dead = closed_port();
    let yaml = format!("{USERS}---\n{}", route("gone", "/gone", &[&format!("http://{dead}/base/path")], ""));
    let proxy = Proxy::start(&yaml);
    assert_eq!(get(&proxy.url("/users")).await.status, 200);
    assert_eq!(get(&proxy.url("/gone")).await.status, 502);
    assert_eq!(get(&proxy.url("/nothing-here")).await.status, 404);
    let scrape = get(&proxy.admin_url("/metrics")).await;
    assert_eq!(scrape.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = scrape.text();
    promtool_check(&text);
    // Unrouted requests have a label value of their own; URLs lose their path.
    assert!(text.contains(r#"route="unrouted""#), "{text}");
    assert!(!text.contains(r#"route="""#), "{text}");
    assert!(text.contains(&format!(r#"upstream="http://{dead}""#)), "{text}");
    assert!(!text.contains("/base/path"), "{text}");
    // OpenMetrics for those who ask.
    let open = send(
        http::Request::get(proxy.admin_url("/metrics"))
            .header("accept", "application/openmetrics-text; version=1.0.0")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request"),
    )
    .await;
    assert!(open.header("content-type").is_some_and(|c| c.starts_with("application/openmetrics-text")));
    assert!(open.text().ends_with("# EOF\n"));
    // Removing the route removes every one of its series.
    proxy.reload(USERS).await;
    let text = get(&proxy.admin_url("/metrics")).await.text();
    assert!(!text.contains("default/gone"), "{text}");
}

#[tokio::test]
async fn the_call_log_says_who_called_what_from_where_served_by_which_endpoint() {
    let upstream = Upstream::named("up").await;
    let limits = sluice_proxy::Limits { max_body_bytes: 10, ..Default::default() };
    let proxy = Proxy::start_with(&route("api", "/", &[&upstream.url()], ""), limits, false);
    sluice_proxy::calllog::capture();
    let agent = "a".repeat(300);
    let answer = send(
        http::Request::get(proxy.url("/who"))
            .header("user-agent", &agent)
            .header("x-request-id", "who-called")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(answer.status, 200);
    let line = call_log_line("who-called").await;
    let json: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(json["client_ip"], "127.0.0.1", "{line}");
    assert_eq!(json["user_agent"].as_str().map(str::len), Some(256), "{line}");
    assert_eq!(json["endpoint"], upstream.addr.to_string(), "{line}");
    assert!(json["duration_us"].is_u64() && json["upstream_us"].is_u64(), "{line}");
    assert!(json["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
    // A body refused by its Content-Length was not read: bytes_in is 0.
    let answer = send(
        http::Request::post(proxy.url("/big"))
            .header("x-request-id", "too-big")
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; 100])))
            .expect("request"),
    )
    .await;
    assert_eq!(answer.status, 413);
    let json: serde_json::Value = serde_json::from_str(&call_log_line("too-big").await).expect("json");
    assert_eq!(json["bytes_in"], 0);
}

#[tokio::test]
async fn header_and_uri_limits_do_what_their_flags_say() {
    let limits = sluice_proxy::Limits { max_header_bytes: 1024, max_headers: 10, ..Default::default() };
    let proxy = Proxy::start_with(USERS, limits, false);
    // A head over 1 KiB (below hyper's 8 KiB buffer minimum): 431.
    let big =
        format!("GET /users HTTP/1.1\r\nHost: gw.test\r\nx-big: {}\r\nConnection: close\r\n\r\n", "b".repeat(2000));
    assert_eq!(raw_exchange(proxy.http, big.as_bytes()).await.status(), 431);
    // More than 10 header fields: 431.
    let many: String = (0..12).map(|i| format!("x-h{i}: v\r\n")).collect();
    let request = format!("GET /users HTTP/1.1\r\nHost: gw.test\r\n{many}Connection: close\r\n\r\n");
    assert_eq!(raw_exchange(proxy.http, request.as_bytes()).await.status(), 431);
    // Within both: served.
    let fine = "GET /users HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_exchange(proxy.http, fine.as_bytes()).await.status(), 200);
    // A target over the URI limit (8 KiB by default) gets a 414 problem.
    let proxy = Proxy::start(USERS);
    let long = format!("GET /users?q={} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n", "q".repeat(9000));
    let answer = raw_exchange(proxy.http, long.as_bytes()).await;
    assert_eq!(answer.status(), 414, "{answer:?}");
    assert_problem(&answer, "uri-too-long", 414);
}

#[test]
fn version_is_a_flag() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-proxy")).arg("--version").output().expect("run");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout), format!("sluice-proxy {}\n", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn files_in_subfolders_and_json_files_are_read() {
    let proxy = Proxy::start(USERS);
    std::fs::create_dir_all(proxy.dir.0.join("team-a")).expect("subfolder");
    let json = r#"{"apiVersion":"sluice.dev/v1alpha1","kind":"ApiRoute","metadata":{"name":"orders"},"spec":{"matches":[{"path":{"type":"PathPrefix","value":"/orders"}}],"backend":{"directResponse":{"status":200,"body":"orders"}}}}"#;
    proxy.dir.write("team-a/orders.json", json);
    assert!(until_body(&proxy.url("/orders"), "orders").await, "a .json file in a subfolder is served");
    assert_eq!(get(&proxy.url("/users")).await.status, 200);
    // An editor's hidden temporary file is not read.
    std::fs::write(proxy.dir.0.join(".routes.yaml.swp"), "not: [yaml").expect("write");
    proxy.dir.write("more.yaml", &USERS.replace("users", "more"));
    assert!(until_body(&proxy.url("/more"), "more").await);
    assert!(proxy.gateway.report.load().load_errors.is_empty());
}

#[tokio::test]
async fn the_same_object_in_two_files_is_an_error() {
    let proxy = Proxy::start(USERS);
    proxy.dir.write("copy.yaml", &USERS.replace("body: users", "body: copy"));
    // The reload is rejected and says which files; the first config serves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let report = proxy.gateway.report.load();
        if let Some(reload) = report.last_reload.as_ref().filter(|r| r.outcome == "rejected") {
            assert!(
                reload
                    .problems
                    .iter()
                    .any(|p| p.contains("routes.yaml: ApiRoute default/users is defined again (first in")
                        && p.contains("copy.yaml")),
                "{:?}",
                reload.problems
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the duplicate was not reported");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(get(&proxy.url("/users")).await.text(), "users");
}

/// A route named `name` claiming prefix `/shared` with a direct answer.
fn shared(name: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{ name: {name} }}\nspec:\n  matches: [{{ path: {{ type: PathPrefix, value: /shared }} }}]\n  backend: {{ directResponse: {{ status: 200, body: {name} }} }}\n"
    )
}

/// The problems of the last reload.
fn problems(proxy: &Proxy) -> String {
    let report = proxy.gateway.report.load();
    report.last_reload.as_ref().map(|r| r.problems.join("\n")).unwrap_or_default()
}

#[tokio::test]
async fn conflicts_are_settled_by_first_seen_and_say_so() {
    // "beta" is served first.
    let proxy = Proxy::start(USERS);
    proxy.dir.write("b.yaml", &shared("beta"));
    assert!(until_body(&proxy.url("/shared"), "beta").await);
    // Added later, "aaa" is newer, though its name and its file sort
    // first: the change is refused with a message that says why.
    proxy.dir.write("a.yaml", &shared("aaa"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !problems(&proxy).contains("ApiRoute default/aaa") {
        assert!(std::time::Instant::now() < deadline, "no conflict reported: {}", problems(&proxy));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(problems(&proxy).contains("default/beta was seen first and wins"), "{}", problems(&proxy));
    assert_eq!(get(&proxy.url("/shared")).await.text(), "beta");
}

#[tokio::test]
async fn requests_the_parser_refuses_are_recorded() {
    let limits = sluice_proxy::Limits { max_header_bytes: 1024, ..Default::default() };
    let proxy = Proxy::start_with(USERS, limits, false);
    sluice_proxy::calllog::capture();
    // The parser's refusals are problem documents with a request id, and
    // the call log has the same id.
    let bad = b"GET /users HTTP/1.1\r\nHost: gw.test\r\nno colon here\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(proxy.http, bad).await;
    assert_eq!(answer.status(), 400);
    assert_problem(&answer, "bad-request", 400);
    let id = answer.header("x-request-id").expect("a request id").to_owned();
    let big =
        format!("GET /users HTTP/1.1\r\nHost: gw.test\r\nx-big: {}\r\nConnection: close\r\n\r\n", "b".repeat(2000));
    let answer = raw_exchange(proxy.http, big.as_bytes()).await;
    assert_eq!(answer.status(), 431);
    assert_problem(&answer, "header-too-large", 431);
    let line = call_log_line_with(&["\"status\":400", "\"error\":\"bad-request\""]).await;
    assert!(line.contains(&format!("\"request_id\":\"{id}\"")), "{line}");
    call_log_line_with(&["\"status\":431", "\"error\":\"header-too-large\""]).await;
    // A good request, then a bad one on the same connection: the first
    // answer is sent as it was, the second is a problem document.
    let pair =
        b"GET /users HTTP/1.1\r\nHost: gw.test\r\n\r\nGET /users HTTP/1.1\r\nHost: gw.test\r\nbad header\r\n\r\n";
    let raw = raw_bytes(proxy.http, pair).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let second = text.find("HTTP/1.1 400 Bad Request\r\n").expect("a second answer");
    assert!(text[second..].contains("application/problem+json") && text[second..].contains("x-request-id: "), "{text}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let metrics = get(&proxy.admin_url("/metrics")).await.text();
        if metrics.contains(r#"sluice_requests_total{route="unrouted",status_class="4xx"} 3"#) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_retired_api_answers_with_the_request_id_like_every_problem() {
    let retired = "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: { name: old }\nspec:\n  matches: [{ path: { type: PathPrefix, value: /v0 } }]\n  lifecycle: { state: Retired }\n  backend: { directResponse: { status: 200 } }\n";
    let proxy = Proxy::start(retired);
    let answer = get(&proxy.url("/v0/users")).await;
    assert_eq!(answer.status, 410);
    let problem = answer.json();
    assert_eq!(problem["type"], "https://sluice.dev/problems/route-retired");
    assert_eq!(problem["requestId"].as_str(), answer.header("x-request-id"));
}

/// Starts the binary on free ports with stdout piped (the call log).
fn spawn_proxy(dir: &TempDir) -> (std::process::Child, std::net::SocketAddr, std::net::SocketAddr) {
    let (listen, admin) = (closed_port(), closed_port());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
        .args(["--config-dir", &dir.0.display().to_string(), "--listen", &listen.to_string()])
        .args(["--admin", &admin.to_string(), "--workers", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start sluice-proxy");
    (child, listen, admin)
}

#[tokio::test]
async fn the_call_log_reaches_stdout_and_is_flushed_at_shutdown() {
    let dir = TempDir::new();
    dir.write("routes.yaml", USERS);
    let (child, listen, _) = spawn_proxy(&dir);
    let url = format!("http://{listen}/users");
    assert!(until_body(&url, "users").await);
    let answer = send(
        http::Request::get(&url)
            .header("x-request-id", "to-stdout")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(answer.status, 200);
    let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
    let output = child.wait_with_output().expect("exit");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.lines().any(|l| l.contains("\"request_id\":\"to-stdout\"")), "{stdout}");
}

#[tokio::test]
async fn a_blocked_stdout_never_blocks_a_worker() {
    let dir = TempDir::new();
    dir.write("routes.yaml", USERS);
    // stdout is a pipe nobody reads: it fills after 64 KiB.
    let (mut child, listen, admin) = spawn_proxy(&dir);
    let url = format!("http://{listen}/users");
    assert!(until_body(&url, "users").await);
    let client = client();
    let started = std::time::Instant::now();
    for _ in 0..6_000 {
        let response = client.get(url.parse().expect("uri")).await.expect("answered");
        assert_eq!(response.status(), 200);
        use http_body_util::BodyExt;
        let _ = response.into_body().collect().await;
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the worker is blocked");
    }
    let metrics = get(&format!("http://{admin}/metrics")).await.text();
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_call_log_dropped_lines_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the dropped-lines counter");
    assert!(dropped > 0, "lines were dropped and counted: {metrics}");
    let _ = child.kill();
    let _ = child.wait();
}

/// The value of an unlabelled series in a scrape.
async fn metric(proxy: &Proxy, name: &str) -> Option<i64> {
    let text = get(&proxy.admin_url("/metrics")).await.text();
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn active_connections_count_silent_ones_too() {
    let proxy = Proxy::start(USERS);
    // Connections that never send a byte.
    let silent: Vec<_> = connect_silently(2, proxy.http).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while metric(&proxy, "sluice_active_connections").await != Some(2) {
        assert!(std::time::Instant::now() < deadline, "{:?}", metric(&proxy, "sluice_active_connections").await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(silent);
}

async fn connect_silently(n: usize, addr: std::net::SocketAddr) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    out
}

/// The README's quickstart, on any ports: every `curl` line answers as the
/// README says (the `files` upstream pointed at a closed port, then at a
/// test server, instead of 127.0.0.1:3000).
#[tokio::test]
async fn the_quickstart_answers_as_the_readme_says_on_any_ports() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
    let yaml = std::fs::read_to_string(folder.join("routes.yaml")).expect("the quickstart");
    let tenants = std::fs::read_to_string(folder.join("tenants.yaml")).expect("the quickstart's tenants");
    assert!(!yaml.contains(":9901"), "the quickstart must not depend on the admin port");
    let files = Upstream::start(|seen| {
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(format!("listing of {}", seen.uri))))
    })
    .await;
    let dir = TempDir::new();
    // First with nothing on the upstream's port: a 502 problem document.
    dir.write("routes.yaml", &yaml.replace("127.0.0.1:3000", &closed_port().to_string()));
    dir.write("tenants.yaml", &tenants);
    let (mut child, listen, admin) = spawn_proxy(&dir);
    let url = |path: &str| format!("http://{listen}{path}");
    assert!(until_body(&url("/health"), "ok").await);
    let down = get(&url("/files/")).await;
    assert_eq!(down.status, 502);
    assert_eq!(down.json()["type"], "https://sluice.dev/problems/upstream-unreachable");
    dir.write("routes.yaml", &yaml.replace("http://127.0.0.1:3000", &files.url()));
    assert!(until_body(&url("/files/"), "listing of /").await);
    let hello = get(&url("/hello")).await;
    assert_eq!(hello.status, 200);
    assert_eq!(hello.json()["message"], "Hello from Sluice");
    let users = get(&url("/v1/users")).await;
    assert_eq!(users.status, 200);
    assert!(users.header("deprecation").is_some() && users.header("sunset").is_some(), "{:?}", users.headers);
    let listing = get(&url("/files/")).await;
    assert_eq!(listing.status, 200);
    assert_eq!(listing.text(), "listing of /");
    assert_eq!(listing.header("x-served-by"), Some("sluice"));
    assert_eq!(get(&url("/v0/users")).await.status, 410);
    // The protected API: 401 without a key, 403 while the partner's
    // subscription is pending, 200 for the owner's own app.
    let orders = |key: Option<&str>| {
        let mut request = http::Request::get(url("/orders")).header("host", "api.localhost");
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        send(request.body(http_body_util::Full::new(bytes::Bytes::new())).expect("request"))
    };
    let no_key = orders(None).await;
    assert_eq!(no_key.status, 401, "{}", no_key.text());
    let pending = orders(Some("sk-quickstart-partner-web")).await;
    assert_eq!(pending.status, 403, "{}", pending.text());
    assert_eq!(pending.json()["type"], "https://sluice.dev/problems/subscription-pending");
    let owner = orders(Some("sk-quickstart-shop-console")).await;
    assert_eq!((owner.status.as_u16(), owner.json()[0]["id"].as_i64()), (200, Some(1)));
    let nope = get(&url("/nope")).await;
    assert_eq!(nope.status, 404);
    assert_eq!(nope.json()["type"], "https://sluice.dev/problems/no-route");
    let status = get(&format!("http://{admin}/status")).await;
    assert_eq!(status.status, 200);
    assert!(get(&format!("http://{admin}/metrics")).await.text().contains("sluice_requests_total"));
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until `/status` satisfies `ok`.
async fn until_status(proxy: &Proxy, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = get(&proxy.admin_url("/status")).await.json();
        if ok(&status) {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn unreadable_files_are_reported_and_read_once_readable() {
    let proxy = Proxy::start(USERS);
    let load_errors = |s: &serde_json::Value| s["loadErrors"].as_array().cloned().unwrap_or_default();
    // A config file that cannot be read (a link to nothing yet) is a load
    // error, and the config served stays.
    std::os::unix::fs::symlink(proxy.dir.0.join("more.target"), proxy.dir.0.join("more.yaml")).expect("symlink");
    let status = until_status(&proxy, "the unreadable file is reported", |s| !load_errors(s).is_empty()).await;
    assert!(load_errors(&status)[0].as_str().is_some_and(|e| e.contains("more.yaml: cannot read")), "{status}");
    assert_eq!(get(&proxy.url("/users")).await.status, 200);
    // Made readable without touching the file (the link): read.
    let more =
        USERS.replace("name: users", "name: more").replace("/users", "/more").replace("body: users", "body: more");
    proxy.dir.write("more.target", &more);
    until_status(&proxy, "the file is read once readable", |s| load_errors(s).is_empty()).await;
    assert!(until_body(&proxy.url("/more"), "more").await);

    // Permissions are part of what the watcher compares: a file made
    // readable again is read again though its mtime did not move.
    use std::os::unix::fs::PermissionsExt;
    let routes = proxy.dir.0.join("routes.yaml");
    let before = sluice_proxy::standalone::fingerprint(&proxy.dir.0);
    std::fs::set_permissions(&routes, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let after = sluice_proxy::standalone::fingerprint(&proxy.dir.0);
    assert_ne!(before, after, "a permission change is a change");
    let mtime = |fp: &sluice_proxy::standalone::Fingerprint| {
        fp.iter().find(|(p, ..)| *p == routes).map(|(_, _, modified, _)| *modified)
    };
    assert_eq!(mtime(&before), mtime(&after), "the mtime did not move");
    // NB: root reads any file; the refusal is seen only without it.
    if std::fs::read(&routes).is_err() {
        until_status(&proxy, "the unreadable file is reported", |s| !load_errors(s).is_empty()).await;
        assert_eq!(get(&proxy.url("/users")).await.status, 200);
    }
    std::fs::set_permissions(&routes, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    until_status(&proxy, "readable again", |s| load_errors(s).is_empty()).await;
    assert_eq!(get(&proxy.url("/users")).await.status, 200);
}

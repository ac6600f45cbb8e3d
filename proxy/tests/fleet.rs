//! Fleet-wide rate limits: two proxy processes sharing one budget through
//! a real Redis (started here on its own port; `scripts/test` puts
//! `redis-server` on the PATH), and what happens when Redis dies.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

struct Redis(Child, SocketAddr);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> Redis {
    let addr = closed_port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string(), "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is on PATH (scripts/test fetches it)");
    // NB: owned at once, so a failed start still reaps the process.
    let redis = Redis(child, addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = stream.write_all(b"PING\r\n");
            let mut reply = [0u8; 7];
            if stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n" {
                return redis;
            }
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Running(Child, SocketAddr);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A proxy on `redis`. NB: the sharing tests give Redis a whole second:
/// with the 5 ms default, a call that a loaded box delays falls back to the
/// proxy's own budget (fail open), which is not what they measure.
fn proxy(dir: &TempDir, redis: SocketAddr, failure: &str) -> Running {
    proxy_with(dir, redis, failure, "5")
}

fn proxy_with(dir: &TempDir, redis: SocketAddr, failure: &str, timeout_ms: &str) -> Running {
    let (listen, admin) = (closed_port(), closed_port());
    let child = Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
        .args(["--config-dir", &dir.0.display().to_string(), "--listen", &listen.to_string()])
        .args(["--admin", &admin.to_string(), "--workers", "2", "--call-log", "off"])
        .args(["--redis-url", &format!("redis://{redis}"), "--redis-failure", failure, "--redis-timeout", timeout_ms])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice-proxy");
    Running(child, listen)
}

async fn until_up(proxy: &Running) {
    let url = format!("http://{}/limited", proxy.1);
    for _ in 0..250 {
        if let Ok(Ok(answer)) =
            tokio::time::timeout(Duration::from_millis(500), client().get(url.parse().expect("uri"))).await
            && answer.status() != 404
            && answer.status() != 503
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the proxy did not start serving");
}

async fn status(proxy: &Running) -> u16 {
    get(&format!("http://{}/limited", proxy.1)).await.status.as_u16()
}

#[tokio::test]
async fn two_proxies_share_one_fleet_wide_limit() {
    let redis = redis();
    let upstream = Upstream::named("ok").await;
    let dir = TempDir::new();
    dir.write(
        "routes.yaml",
        &route("limited", "/limited", &[&upstream.url()], "  rateLimit: { requests: 100, period: Hour, key: Route }\n"),
    );
    let (a, b) = (proxy_with(&dir, redis.1, "open", "1000"), proxy_with(&dir, redis.1, "open", "1000"));
    until_up(&a).await;
    until_up(&b).await;
    let mut allowed = 0;
    for i in 0..200 {
        let answer = status(if i % 2 == 0 { &a } else { &b }).await;
        assert!(answer == 200 || answer == 429, "{answer}");
        allowed += usize::from(answer == 200);
    }
    // Two proxies on their own would let 200 through; together at most
    // the limit, less the cells a proxy took and did not spend in time
    // (a twentieth of the limit at a time).
    assert!((80..=100).contains(&allowed), "{allowed} of 200 let through for a limit of 100 across the fleet");
}

#[tokio::test]
async fn a_dead_redis_costs_little_and_the_failure_policy_decides() {
    let redis = redis();
    let upstream = Upstream::named("ok").await;
    let dir = TempDir::new();
    dir.write(
        "routes.yaml",
        &route(
            "limited",
            "/limited",
            &[&upstream.url()],
            "  rateLimit: { requests: 1000, period: Hour, key: Route }\n",
        ),
    );
    let (open, closed) = (proxy(&dir, redis.1, "open"), proxy(&dir, redis.1, "closed"));
    until_up(&open).await;
    until_up(&closed).await;
    assert_eq!((status(&open).await, status(&closed).await), (200, 200));
    drop(redis);
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let started = Instant::now();
        assert_eq!(status(&open).await, 200, "fail open: this proxy's own budget decides");
        let closed_answer = get(&format!("http://{}/limited", closed.1)).await;
        slowest = slowest.max(started.elapsed() / 2);
        // NB: reserved cells may still be spent for up to a second.
        if closed_answer.status == 503 {
            assert_eq!(closed_answer.json()["type"], "https://sluice.dev/problems/limits-unavailable");
        } else {
            assert_eq!(closed_answer.status, 200);
        }
    }
    let final_answer = get(&format!("http://{}/limited", closed.1)).await;
    for _ in 0..100 {
        if get(&format!("http://{}/limited", closed.1)).await.status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(&closed).await, 503, "fail closed: nobody passes ({:?})", final_answer.status);
    // A dead Redis adds at most the timeout (5 ms) a request, and nothing
    // once the breaker is open; the bound leaves room for a loaded box.
    assert!(slowest < Duration::from_millis(250), "a request took {slowest:?} with Redis dead");
}

#[tokio::test]
async fn a_tenants_daily_quota_holds_across_the_fleet() {
    let redis = redis();
    let upstream = Upstream::named("ok").await;
    let dir = TempDir::new();
    dir.write(
        "routes.yaml",
        &format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: Tenant\nmetadata: {{ name: metered }}\nspec:\n  namespaces: [metered]\n  hostnames: [metered.test]\n  quotas: {{ requestsPerDay: 40 }}\n---\napiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{ name: limited, namespace: metered }}\nspec:\n  hosts: [metered.test]\n  matches: [{{ path: {{ type: PathPrefix, value: /limited }} }}]\n  backend: {{ upstreams: [{{ url: {} }}] }}\n",
            upstream.url()
        ),
    );
    let (a, b) = (proxy_with(&dir, redis.1, "open", "1000"), proxy_with(&dir, redis.1, "open", "1000"));
    async fn call(p: &Running) -> Answer {
        get_host(&format!("http://{}/limited", p.1), "metered.test").await
    }
    for p in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(p.1).is_err() {
            assert!(Instant::now() < deadline, "the proxy did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut allowed = 0;
    for i in 0..60 {
        let answer = call(if i % 2 == 0 { &a } else { &b }).await;
        assert!(answer.status == 200 || answer.status == 429, "{}", answer.status);
        if answer.status == 429 {
            assert_eq!(answer.json()["type"], "https://sluice.dev/problems/quota-exceeded");
        }
        allowed += usize::from(answer.status == 200);
    }
    // On their own the two would let 80 through; together at most 40, less
    // what a proxy took and had not spent.
    assert!((36..=40).contains(&allowed), "{allowed} requests for a daily quota of 40 across the fleet");
}

//! Route matching, as a pure function: routes written as the ApiRoute YAML a
//! user would apply, compiled by `translate`, then `Router::find` on plain
//! request views. No sockets here.

use http::{HeaderName, HeaderValue};
use snapshot::{Inputs, translate};

use super::*;

/// A compiled routing table and the ids of its routes.
struct Table {
    router: Router,
    ids: Vec<String>,
}

/// Compiles YAML documents; every object must compile without a False
/// condition, so a test never silently loses a route to a conflict.
fn table(yaml: &str) -> Table {
    let mut inputs = Inputs::default();
    inputs.load_yaml("routes.yaml", yaml).expect("the test YAML loads");
    let translation = translate(&inputs);
    let problems: Vec<_> = translation.problems().collect();
    assert!(problems.is_empty(), "the test routes do not compile cleanly: {problems:#?}");
    let snapshot = translation.snapshot;
    Table {
        router: Router::new(&snapshot.routes, &snapshot.reserved_hosts),
        ids: snapshot.routes.iter().map(|r| r.id.clone()).collect(),
    }
}

/// An ApiRoute in the `default` namespace answering directly, with `hosts`
/// and `matches` given as YAML flow text (`[]` for none).
fn route(name: &str, hosts: &[&str], matches: &str) -> String {
    route_in("default", name, hosts, matches)
}

fn route_in(namespace: &str, name: &str, hosts: &[&str], matches: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  hosts: {hosts:?}\n  matches: {matches}\n  backend:\n    directResponse:\n      status: 200\n      body: {name}\n---\n"
    )
}

/// A request to route.
struct Req<'a> {
    host: &'a str,
    method: http::Method,
    target: &'a str,
    headers: HeaderMap,
}

fn req<'a>(host: &'a str, target: &'a str) -> Req<'a> {
    Req { host, method: http::Method::GET, target, headers: HeaderMap::new() }
}

impl Req<'_> {
    fn method(mut self, method: http::Method) -> Self {
        self.method = method;
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        self
    }
}

impl Table {
    fn found(&self, r: &Req<'_>) -> Option<Found> {
        let (path, query) = match r.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (r.target, None),
        };
        self.router.find(&RequestView { host: r.host, path, method: &r.method, headers: &r.headers, query })
    }

    /// The name (without namespace) of the route serving `r`.
    fn name(&self, r: &Req<'_>) -> Option<&str> {
        self.found(r).map(|f| self.ids[f.route].rsplit('/').next().unwrap_or_default())
    }
}

const ANY: &str = "any.example.com";

#[test]
fn exact_path_beats_prefix_and_regex() {
    let t = table(
        &[
            route("exact", &[], "[{path: {type: Exact, value: /users}}]"),
            route("prefix", &[], "[{path: {type: PathPrefix, value: /users}}]"),
            route("regex", &[], "[{path: {type: RegularExpression, value: '/users.*'}}]"),
        ]
        .concat(),
    );
    assert_eq!(t.name(&req(ANY, "/users")), Some("exact"));
    assert_eq!(t.name(&req(ANY, "/users/7")), Some("prefix"));
    // An exact match is the whole path: a trailing slash is another path.
    assert_eq!(t.name(&req(ANY, "/users/")), Some("prefix"));
    assert_eq!(t.name(&req(ANY, "/usersx")), Some("regex"));
    assert_eq!(t.name(&req(ANY, "/other")), None);
}

#[test]
fn longest_prefix_wins_whatever_the_order() {
    let t = table(
        &[
            route("a-root", &[], "[{path: {type: PathPrefix, value: /}}]"),
            route("b-v1-users", &[], "[{path: {type: PathPrefix, value: /v1/users}}]"),
            route("c-v1", &[], "[{path: {type: PathPrefix, value: /v1}}]"),
        ]
        .concat(),
    );
    assert_eq!(t.name(&req(ANY, "/v1/users/7/orders")), Some("b-v1-users"));
    assert_eq!(t.name(&req(ANY, "/v1/users")), Some("b-v1-users"));
    assert_eq!(t.name(&req(ANY, "/v1/orders")), Some("c-v1"));
    assert_eq!(t.name(&req(ANY, "/v1")), Some("c-v1"));
    assert_eq!(t.name(&req(ANY, "/v2")), Some("a-root"));
    assert_eq!(t.name(&req(ANY, "/")), Some("a-root"));
}

#[test]
fn prefix_matches_whole_segments_only() {
    let t = table(&route("a", &[], "[{path: {type: PathPrefix, value: /a}}]"));
    for path in ["/a", "/a/", "/a/b", "/a/b/c", "/a//b"] {
        assert_eq!(t.name(&req(ANY, path)), Some("a"), "{path}");
    }
    for path in ["/ab", "/ab/c", "/", "/b/a", "/A"] {
        assert_eq!(t.name(&req(ANY, path)), None, "{path}");
    }
}

#[test]
fn a_prefix_written_with_a_trailing_slash_still_matches_its_segment() {
    let t = table(&route("a", &[], "[{path: {type: PathPrefix, value: /a/}}]"));
    assert_eq!(t.name(&req(ANY, "/a/b")), Some("a"));
    assert_eq!(t.name(&req(ANY, "/ab")), None);
}

#[test]
fn regex_matches_the_whole_path_in_snapshot_order() {
    let t = table(
        &[
            route("a-user", &[], "[{path: {type: RegularExpression, value: '/users/[0-9]+'}}]"),
            route("b-anything", &[], "[{path: {type: RegularExpression, value: '/users/.+'}}]"),
        ]
        .concat(),
    );
    assert_eq!(t.name(&req(ANY, "/users/42")), Some("a-user"));
    assert_eq!(t.name(&req(ANY, "/users/me")), Some("b-anything"));
    // Anchored: a match inside the path is not enough.
    assert_eq!(t.name(&req(ANY, "/v1/users/42")), None);
    assert_eq!(t.name(&req(ANY, "/users/")), None);
    assert_eq!(t.found(&req(ANY, "/users/42")).and_then(|f| f.prefix_len), None);
}

#[test]
fn a_prefix_beats_a_regex_even_when_the_regex_is_narrower() {
    // Documented precedence: exact, then prefix, then regex.
    let t = table(
        &[
            route("prefix", &[], "[{path: {type: PathPrefix, value: /users}}]"),
            route("regex", &[], "[{path: {type: RegularExpression, value: '/users/[0-9]+'}}]"),
        ]
        .concat(),
    );
    assert_eq!(t.name(&req(ANY, "/users/42")), Some("prefix"));
}

#[test]
fn methods_filter_and_a_method_specific_match_wins() {
    let t = table(
        &[
            route("a-any", &[], "[{path: {type: PathPrefix, value: /items}}]"),
            route("b-write", &[], "[{path: {type: PathPrefix, value: /items}, methods: [POST, PUT]}]"),
            route("c-delete-only", &[], "[{path: {type: Exact, value: /only-delete}, methods: [DELETE]}]"),
        ]
        .concat(),
    );
    assert_eq!(t.name(&req(ANY, "/items/1").method(http::Method::POST)), Some("b-write"));
    assert_eq!(t.name(&req(ANY, "/items/1").method(http::Method::PUT)), Some("b-write"));
    assert_eq!(t.name(&req(ANY, "/items/1")), Some("a-any"));
    assert_eq!(t.name(&req(ANY, "/items/1").method(http::Method::PATCH)), Some("a-any"));
    assert_eq!(t.name(&req(ANY, "/only-delete").method(http::Method::DELETE)), Some("c-delete-only"));
    assert_eq!(t.name(&req(ANY, "/only-delete")), None);
    // A method outside the list of known ones matches only method-less routes.
    let purge = http::Method::from_bytes(b"PURGE").expect("method");
    assert_eq!(t.name(&req(ANY, "/only-delete").method(purge.clone())), None);
    assert_eq!(t.name(&req(ANY, "/items").method(purge)), Some("a-any"));
}

#[test]
fn the_same_regex_with_methods_wins_over_one_without() {
    // Precedence rule 3 ("among equals, a match that names methods")
    // applies to identical regular expressions too.
    let t = table(
        &[
            route("a-any", &[], "[{path: {type: RegularExpression, value: '/r/.*'}}]"),
            route("b-get", &[], "[{path: {type: RegularExpression, value: '/r/.*'}, methods: [GET]}]"),
        ]
        .concat(),
    );
    assert_eq!(t.name(&req(ANY, "/r/x")), Some("b-get"));
    assert_eq!(t.name(&req(ANY, "/r/x").method(http::Method::POST)), Some("a-any"));
}

#[test]
fn header_exact_regex_and_present() {
    let t = table(&[
        route("a-plain", &[], "[{path: {type: PathPrefix, value: /h}}]"),
        route("b-exact", &[], "[{path: {type: PathPrefix, value: /h}, headers: [{name: X-Version, value: '2'}]}]"),
        route(
            "c-regex",
            &[],
            "[{path: {type: PathPrefix, value: /h}, headers: [{name: x-tenant, type: RegularExpression, value: 'team-[a-z]+'}]}]",
        ),
        route("d-present", &[], "[{path: {type: PathPrefix, value: /h}, headers: [{name: x-debug, type: Present}]}]"),
    ]
    .concat());
    assert_eq!(t.name(&req(ANY, "/h")), Some("a-plain"));
    assert_eq!(t.name(&req(ANY, "/h").header("x-version", "2")), Some("b-exact"));
    assert_eq!(t.name(&req(ANY, "/h").header("x-version", "20")), Some("a-plain"));
    assert_eq!(t.name(&req(ANY, "/h").header("x-tenant", "team-blue")), Some("c-regex"));
    // The expression is anchored to the whole value.
    assert_eq!(t.name(&req(ANY, "/h").header("x-tenant", "my-team-blue")), Some("a-plain"));
    assert_eq!(t.name(&req(ANY, "/h").header("x-tenant", "team-Blue")), Some("a-plain"));
    assert_eq!(t.name(&req(ANY, "/h").header("x-debug", "")), Some("d-present"));
    assert_eq!(t.name(&req(ANY, "/h").header("x-debug", "anything")), Some("d-present"));
    // Any one of repeated values may match.
    assert_eq!(t.name(&req(ANY, "/h").header("x-version", "1").header("x-version", "2")), Some("b-exact"));
}

#[test]
fn more_header_matches_win_and_all_must_match() {
    let t = table(
        &[
            route("a-one", &[], "[{path: {type: PathPrefix, value: /h}, headers: [{name: x-a, value: '1'}]}]"),
            route(
                "b-two",
                &[],
                "[{path: {type: PathPrefix, value: /h}, headers: [{name: x-a, value: '1'}, {name: x-b, value: '1'}]}]",
            ),
        ]
        .concat(),
    );
    assert_eq!(t.name(&req(ANY, "/h").header("x-a", "1").header("x-b", "1")), Some("b-two"));
    assert_eq!(t.name(&req(ANY, "/h").header("x-a", "1").header("x-b", "2")), Some("a-one"));
    assert_eq!(t.name(&req(ANY, "/h").header("x-b", "1")), None);
}

#[test]
fn query_exact_regex_and_present() {
    let t = table(&[
        route("a-plain", &[], "[{path: {type: Exact, value: /q}}]"),
        route("b-exact", &[], "[{path: {type: Exact, value: /q}, queryParams: [{name: version, value: '2'}]}]"),
        route(
            "c-regex",
            &[],
            "[{path: {type: Exact, value: /q}, queryParams: [{name: id, type: RegularExpression, value: '[0-9]+'}]}]",
        ),
        route("d-present", &[], "[{path: {type: Exact, value: /q}, queryParams: [{name: debug, type: Present}]}]"),
    ]
    .concat());
    assert_eq!(t.name(&req(ANY, "/q")), Some("a-plain"));
    assert_eq!(t.name(&req(ANY, "/q?version=2")), Some("b-exact"));
    assert_eq!(t.name(&req(ANY, "/q?a=b&version=2&c")), Some("b-exact"));
    assert_eq!(t.name(&req(ANY, "/q?version=3")), Some("a-plain"));
    assert_eq!(t.name(&req(ANY, "/q?xversion=2")), Some("a-plain"));
    assert_eq!(t.name(&req(ANY, "/q?id=123")), Some("c-regex"));
    assert_eq!(t.name(&req(ANY, "/q?id=12a")), Some("a-plain"));
    assert_eq!(t.name(&req(ANY, "/q?debug")), Some("d-present"));
    assert_eq!(t.name(&req(ANY, "/q?debug=")), Some("d-present"));
    assert_eq!(t.name(&req(ANY, "/q?debug=1")), Some("d-present"));
    // A header of the same name is not a query parameter.
    assert_eq!(t.name(&req(ANY, "/q").header("debug", "1")), Some("a-plain"));
}

#[test]
fn exact_host_then_wildcard_then_routes_without_hosts() {
    let t = table(
        &[
            route("a-exact", &["api.example.com"], "[{path: {type: PathPrefix, value: /}}]"),
            route("b-wild", &["*.example.com"], "[{path: {type: PathPrefix, value: /}}]"),
            route("c-deeper-wild", &["*.eu.example.com"], "[{path: {type: PathPrefix, value: /}}]"),
            route("d-nohost", &[], "[{path: {type: PathPrefix, value: /}}]"),
        ]
        .concat(),
    );
    assert_eq!(t.name(&req("api.example.com", "/x")), Some("a-exact"));
    assert_eq!(t.name(&req("www.example.com", "/x")), Some("b-wild"));
    assert_eq!(t.name(&req("a.b.example.com", "/x")), Some("b-wild"));
    // The longest wildcard suffix first.
    assert_eq!(t.name(&req("api.eu.example.com", "/x")), Some("c-deeper-wild"));
    // A wildcard needs at least one label before its suffix.
    assert_eq!(t.name(&req("example.com", "/x")), Some("d-nohost"));
    assert_eq!(t.name(&req("other.org", "/x")), Some("d-nohost"));
    assert_eq!(t.name(&req("", "/x")), Some("d-nohost"));
}

#[test]
fn a_more_specific_host_wins_over_a_longer_path_elsewhere() {
    let t = table(
        &[
            route("a-exact", &["api.example.com"], "[{path: {type: PathPrefix, value: /}}]"),
            route("b-wild", &["*.example.com"], "[{path: {type: Exact, value: /v1/users}}]"),
        ]
        .concat(),
    );
    assert_eq!(t.name(&req("api.example.com", "/v1/users")), Some("a-exact"));
}

#[test]
fn no_match_on_the_exact_host_falls_through_to_less_specific_hosts() {
    let t = table(
        &[
            route("a-exact", &["api.example.com"], "[{path: {type: PathPrefix, value: /v1}}]"),
            route("b-wild", &["*.example.com"], "[{path: {type: PathPrefix, value: /v2}}]"),
            route("c-nohost", &[], "[{path: {type: PathPrefix, value: /}}]"),
        ]
        .concat(),
    );
    assert_eq!(t.name(&req("api.example.com", "/v1/x")), Some("a-exact"));
    assert_eq!(t.name(&req("api.example.com", "/v2/x")), Some("b-wild"));
    assert_eq!(t.name(&req("api.example.com", "/v3/x")), Some("c-nohost"));
}

#[test]
fn a_catch_all_route_never_serves_a_tenant_reserved_host() {
    let yaml = [
        "apiVersion: sluice.dev/v1alpha1\nkind: Tenant\nmetadata:\n  name: team-a\nspec:\n  namespaces: [team-a]\n  hostnames: [\"api.team-a.example.com\", \"*.apps.team-a.example.com\"]\n---\n".to_owned(),
        route_in("team-a", "orders", &["api.team-a.example.com"], "[{path: {type: PathPrefix, value: /orders}}]"),
        route_in("sandbox", "catch-all", &[], "[]"),
    ]
    .concat();
    let t = table(&yaml);
    assert_eq!(t.name(&req("api.team-a.example.com", "/orders/1")), Some("orders"));
    // The tenant's host, on a path its route does not serve: not the catch-all.
    assert_eq!(t.name(&req("api.team-a.example.com", "/other")), None);
    // A host under the tenant's wildcard, with no route at all.
    assert_eq!(t.name(&req("x.apps.team-a.example.com", "/")), None);
    // Any other host is the catch-all's.
    assert_eq!(t.name(&req("elsewhere.example.com", "/other")), Some("catch-all"));
    assert_eq!(t.name(&req("team-a.example.com", "/")), Some("catch-all"));
}

#[test]
fn prefix_len_is_the_matched_prefix_for_rewrites() {
    let t = table(
        &[
            route("a-api", &[], "[{path: {type: PathPrefix, value: /api/v1}}]"),
            route("b-root", &[], "[{path: {type: PathPrefix, value: /}}]"),
            route("c-exact", &[], "[{path: {type: Exact, value: /exact}}]"),
            route("d-regex", &[], "[{path: {type: RegularExpression, value: '/re/[a-z]+'}}]"),
        ]
        .concat(),
    );
    let found = |target| t.found(&req(ANY, target)).map(|f| (t.ids[f.route].as_str(), f.prefix_len));
    assert_eq!(found("/api/v1/users"), Some(("default/a-api", Some(7))));
    assert_eq!(found("/api/v1"), Some(("default/a-api", Some(7))));
    assert_eq!(found("/api/v1/"), Some(("default/a-api", Some(7))));
    assert_eq!(found("/api/v2"), Some(("default/b-root", Some(0))));
    assert_eq!(found("/"), Some(("default/b-root", Some(0))));
    assert_eq!(found("/exact"), Some(("default/c-exact", None)));
    // The root prefix takes "/re/x" before the regex is tried.
    assert_eq!(found("/re/abc"), Some(("default/b-root", Some(0))));
}

#[test]
fn a_route_without_matches_serves_every_path_and_any_match_of_a_route_counts() {
    let t = table(
        &[
            route("a-all", &["all.example.com"], "[]"),
            route(
                "b-two",
                &["two.example.com"],
                "[{path: {type: Exact, value: /one}}, {path: {type: PathPrefix, value: /two}, methods: [POST]}]",
            ),
        ]
        .concat(),
    );
    assert_eq!(t.name(&req("all.example.com", "/")), Some("a-all"));
    assert_eq!(t.name(&req("all.example.com", "/deep/path")), Some("a-all"));
    assert_eq!(t.name(&req("two.example.com", "/one")), Some("b-two"));
    assert_eq!(t.name(&req("two.example.com", "/two/x").method(http::Method::POST)), Some("b-two"));
    assert_eq!(t.name(&req("two.example.com", "/two/x")), None);
    assert_eq!(t.found(&req("all.example.com", "/deep/path")).and_then(|f| f.prefix_len), Some(0));
}

#[test]
fn hosts_are_matched_case_insensitively_via_translate() {
    // translate lower-cases hosts; the pipeline lower-cases the request's.
    let t = table(&route("a", &["API.Example.COM"], "[]"));
    assert_eq!(t.name(&req("api.example.com", "/")), Some("a"));
}

#[test]
fn an_empty_table_routes_nothing() {
    let router = Router::new(&[], &[]);
    let headers = HeaderMap::new();
    let view =
        RequestView { host: "example.com", path: "/", method: &http::Method::GET, headers: &headers, query: None };
    assert_eq!(router.find(&view), None);
}

#[test]
fn thousands_of_wildcard_hosts_match_by_label() {
    let yaml: String = (0..5_000)
        .map(|i| {
            route(&format!("w{i:05}"), &[&format!("*.t{i}.example.com")], "[{path: {type: PathPrefix, value: /}}]")
        })
        .collect();
    let t = table(&yaml);
    assert_eq!(t.name(&req("api.t4321.example.com", "/x")), Some("w04321"));
    assert_eq!(t.name(&req("a.b.t7.example.com", "/x")), Some("w00007"));
    assert_eq!(t.name(&req("t7.example.com", "/x")), None);
    assert_eq!(t.name(&req("api.t5000.example.com", "/x")), None);
}

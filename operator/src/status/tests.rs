use serde_json::json;
use snapshot::status::{ObjectRef, ObjectStatus, StatusCondition, condition, reason};

use super::desired;

fn verdict(accepted: bool) -> ObjectStatus {
    let mut status = ObjectStatus::new(ObjectRef::new("ApiRoute", "team-a", "orders"), Some(3));
    status.set(match accepted {
        true => StatusCondition::ok(condition::ACCEPTED, reason::ACCEPTED, "The route is valid."),
        false => StatusCondition::fail(condition::ACCEPTED, reason::INVALID, "spec.hosts[0] is not a hostname."),
    });
    status.apps = Some(2);
    status
}

fn at(second: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(second).expect("time")
}

#[test]
fn a_first_verdict_is_written_with_the_generation_and_the_time() {
    let status = desired(&verdict(true), Some(3), &json!({}), None, at(1_800_000_000)).expect("a write");
    assert_eq!(status["apps"], 2);
    let accepted = &status["conditions"][0];
    assert_eq!(accepted["type"], "Accepted");
    assert_eq!(accepted["status"], "True");
    assert_eq!(accepted["observedGeneration"], 3);
    assert_eq!(accepted["lastTransitionTime"], "2027-01-15T08:00:00Z");
}

#[test]
fn the_same_verdict_again_writes_nothing_and_a_flip_moves_the_time() {
    let first = desired(&verdict(true), Some(3), &json!({}), None, at(1_800_000_000)).expect("a write");
    assert_eq!(desired(&verdict(true), Some(3), &first, None, at(1_800_000_999)), None, "unchanged: no write");
    // A new generation with the same verdict: written, the time kept.
    let next = desired(&verdict(true), Some(4), &first, None, at(1_800_000_999)).expect("a write");
    assert_eq!(next["conditions"][0]["lastTransitionTime"], "2027-01-15T08:00:00Z");
    assert_eq!(next["conditions"][0]["observedGeneration"], 4);
    // The verdict flips: the time moves.
    let flipped = desired(&verdict(false), Some(4), &next, None, at(1_800_000_999)).expect("a write");
    assert_eq!(flipped["conditions"][0]["status"], "False");
    assert_eq!(flipped["conditions"][0]["lastTransitionTime"], "2027-01-15T08:16:39Z");
}

#[test]
fn a_missing_secret_says_which_secrets_the_operator_reads() {
    let mut status = ObjectStatus::new(ObjectRef::new("ApiRoute", "team-a", "orders"), Some(1));
    status.set(StatusCondition::fail(
        condition::RESOLVED_REFS,
        reason::SECRET_NOT_FOUND,
        "Secret team-a/jwks not found.",
    ));
    let written = desired(&status, Some(1), &json!({}), None, at(0)).expect("a write");
    let message = written["conditions"][0]["message"].as_str().expect("message");
    assert!(message.starts_with("Secret team-a/jwks not found. (the operator reads only"), "{message}");
    assert!(message.contains("sluice.dev/config"), "{message}");
}

#[test]
fn only_a_condition_that_turns_false_is_an_event() {
    let accepted = desired(&verdict(true), Some(3), &json!({}), None, at(0)).expect("a write");
    let rejected = verdict(false);
    let turned = super::turned_false(&rejected, &accepted);
    assert_eq!(turned.len(), 1, "True -> False is news");
    assert_eq!(turned[0].reason, reason::INVALID);
    let already = desired(&rejected, Some(3), &accepted, None, at(1)).expect("a write");
    assert!(super::turned_false(&rejected, &already).is_empty(), "False -> False (same reason) is not");
    assert!(super::turned_false(&verdict(true), &already).is_empty(), "False -> True is not a warning");
}

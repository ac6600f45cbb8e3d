//! `translate`: the pure function from [`Inputs`] to a [`Translation`].
//!
//! ```text
//!  Inputs ──sort──> Index ──> tenants ──> api keys ──> providers
//!                                 │                       │
//!                                 v                       v
//!                       ApiRoutes + Ingresses (age order, conflicts)
//!                                 │
//!                                 v
//!                         subscriptions ──> access lists
//!                                 │
//!                                 v
//!               Snapshot (sorted, hashed)  +  one ObjectStatus per object
//! ```
//!
//! Contract:
//! * No I/O, no clock, no randomness: the same inputs, in any order, give a
//!   byte-identical serialized snapshot and the same statuses.
//! * A bad object never fails the whole. It is left out of the snapshot
//!   and its status says why (`Accepted=False` for an invalid spec,
//!   `ResolvedRefs=False` for a missing reference), naming the field.
//! * Where two objects claim the same thing (a namespace, a hostname
//!   pattern, a host + path + method), the older one wins (creation time,
//!   then namespace/name) and the newer one is told who won.

mod backends;
mod hosts;
mod index;
mod ingress;
mod providers;
mod routes;
mod subscriptions;
mod tenants;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Inputs;
use crate::model::{Certificate, Route, Snapshot};
use crate::status::{ObjectRef, ObjectStatus, Rejection, StatusCondition, condition, reason};

pub use hosts::{covers as host_covers, normalize as normalize_host};

/// Names used by app API key Secrets, and the hash the snapshot stores.
pub mod api_keys {
    pub use super::tenants::{API_KEY_FIELD, API_KEY_SECRET_TYPE, APP_LABEL, hash_api_key};
}

/// What translate produces: the snapshot and a status for every input
/// object it has something to say about.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Translation {
    /// The snapshot to serve.
    pub snapshot: Snapshot,
    /// Statuses, sorted by object.
    pub statuses: Vec<ObjectStatus>,
}

impl Translation {
    /// The status of one object.
    pub fn status(&self, object: &ObjectRef) -> Option<&ObjectStatus> {
        self.statuses.binary_search_by(|s| s.object.cmp(object)).ok().map(|i| &self.statuses[i])
    }

    /// Statuses with at least one False condition.
    pub fn problems(&self) -> impl Iterator<Item = &ObjectStatus> {
        self.statuses.iter().filter(|s| s.has_false())
    }
}

/// Compiles the inputs into a snapshot and statuses. See the module docs
/// for the contract.
pub fn translate(inputs: &Inputs) -> Translation {
    let index = index::Index::new(inputs);
    let older = match inputs.ages {
        crate::AgeSource::CreationTime => "is older",
        crate::AgeSource::FirstSeen => "was seen first",
    };
    let mut out = Output { older, ..Output::default() };

    let tenancy = tenants::translate(&index, &mut out);
    let api_keys = tenants::api_keys(&index, &tenancy, &mut out);
    let providers = providers::translate(&index, &tenancy, &mut out);

    let mut compiled = routes::translate(&index, &tenancy, &providers, &mut out);
    compiled.extend(ingress::translate(&index, &tenancy, &mut out));
    let routes::Accepted { mut routes, certificates } = routes::resolve_conflicts(compiled, &mut out);

    subscriptions::translate(&index, &tenancy, &mut routes, &mut out);
    for route in &routes {
        if route.source.kind == "ApiRoute" {
            out.status_mut(&route.source, None).apps = Some(route.access.apps.len() as u32);
        }
    }

    let mut snapshot = Snapshot {
        version: String::new(),
        routes: sorted_by(routes, |a, b| a.id.cmp(&b.id)),
        reserved_hosts: tenancy.reserved_hosts(),
        certificates,
        tenants: tenancy.policies(),
        api_keys,
        providers: providers.into_values().collect(),
    };
    snapshot.version = content_version(&snapshot);
    Translation { snapshot, statuses: out.finish() }
}

/// The version of a snapshot: the first 16 hex digits of the SHA-256 of
/// its JSON serialization with an empty version.
pub fn content_version(snapshot: &Snapshot) -> String {
    struct HashWriter(Sha256);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut writer = HashWriter(Sha256::new());
    let unversioned = SnapshotContent(snapshot);
    // Serializing plain data into a hasher cannot fail.
    if serde_json::to_writer(&mut writer, &unversioned).is_err() {
        return String::from("unserializable");
    }
    let digest = writer.0.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Serializes a snapshot without its version field.
struct SnapshotContent<'a>(&'a Snapshot);

impl Serialize for SnapshotContent<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let s = self.0;
        let mut st = serializer.serialize_struct("Snapshot", 6)?;
        st.serialize_field("routes", &s.routes)?;
        st.serialize_field("reservedHosts", &s.reserved_hosts)?;
        st.serialize_field("certificates", &s.certificates)?;
        st.serialize_field("tenants", &s.tenants)?;
        st.serialize_field("apiKeys", &s.api_keys)?;
        st.serialize_field("providers", &s.providers)?;
        st.end()
    }
}

/// Sorts large values in place without moving each one O(n log n) times:
/// indices are sorted, then the values are put in that order by following
/// the permutation's cycles (one swap per value, no second vector).
pub(crate) fn sorted_by<T>(mut items: Vec<T>, compare: impl Fn(&T, &T) -> std::cmp::Ordering) -> Vec<T> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| compare(&items[a], &items[b]));
    // Position k takes the value at order[k]; a finished position points
    // at itself.
    for start in 0..order.len() {
        let mut current = start;
        while order[current] != start {
            let next = order[current];
            items.swap(current, next);
            order[current] = current;
            current = next;
        }
        order[current] = current;
    }
    items
}

/// Statuses being collected.
#[derive(Default)]
pub(crate) struct Output {
    statuses: BTreeMap<ObjectRef, ObjectStatus>,
    /// How conflict messages say that the winner is older: "is older", or
    /// "was seen first" when ages are first-seen times.
    pub older: &'static str,
}

impl Output {
    /// The status of an object, created on first use.
    pub fn status_mut(&mut self, object: &ObjectRef, generation: Option<i64>) -> &mut ObjectStatus {
        if !self.statuses.contains_key(object) {
            self.statuses.insert(object.clone(), ObjectStatus::new(object.clone(), generation));
        }
        let Some(status) = self.statuses.get_mut(object) else { unreachable!("inserted above") };
        if generation.is_some() {
            status.observed_generation = generation;
        }
        status
    }

    /// Records an accepted object: Accepted=True and ResolvedRefs=True,
    /// unless already set.
    pub fn accept(&mut self, object: &ObjectRef, generation: Option<i64>) {
        let status = self.status_mut(object, generation);
        if status.condition(condition::ACCEPTED).is_none() {
            status.set(StatusCondition::ok(condition::ACCEPTED, reason::ACCEPTED, format!("{object} is valid.")));
        }
        if status.condition(condition::RESOLVED_REFS).is_none() {
            status.set(StatusCondition::ok(
                condition::RESOLVED_REFS,
                reason::RESOLVED_REFS,
                "Every reference was found.",
            ));
        }
    }

    /// Records a rejected object. An unresolved reference implies the spec
    /// itself was fine, so Accepted is True then unless already False.
    pub fn reject(&mut self, object: &ObjectRef, generation: Option<i64>, rejection: Rejection) {
        let status = self.status_mut(object, generation);
        let Rejection(condition) = rejection;
        let kind = condition.kind.clone();
        status.set(condition);
        if kind == condition::RESOLVED_REFS && status.condition(condition::ACCEPTED).is_none() {
            status.set(StatusCondition::ok(
                condition::ACCEPTED,
                reason::ACCEPTED,
                format!("{object} is valid, but a reference is missing (see ResolvedRefs), so it is left out."),
            ));
        }
    }

    fn finish(self) -> Vec<ObjectStatus> {
        self.statuses
            .into_values()
            .map(|mut s| {
                // A fixed order: Accepted, ResolvedRefs, then the rest by type.
                s.conditions.sort_by_key(|c| match c.kind.as_str() {
                    condition::ACCEPTED => (0, String::new()),
                    condition::RESOLVED_REFS => (1, String::new()),
                    other => (2, other.to_owned()),
                });
                s
            })
            .collect()
    }
}

/// A route compiled from one object, before conflicts are settled.
pub(crate) struct Candidate {
    /// The route.
    pub route: Route,
    /// Sort key for "older wins".
    pub age: index::Age,
    /// `metadata.generation` of the source.
    pub generation: Option<i64>,
    /// TLS certificates the route brings: (hosts, certificate).
    pub certificates: Vec<Certificate>,
    /// A warning that does not keep the route out (e.g. a missing OpenAPI
    /// document), set as a False condition.
    pub warning: Option<Rejection>,
}

#[cfg(test)]
mod sort_tests {
    #[test]
    fn sorting_in_place_follows_every_cycle() {
        // A fixed pseudo-random order, with repeats, fixed points and long cycles.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for len in [0usize, 1, 2, 3, 10, 257] {
            let items: Vec<u64> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed % 50
                })
                .collect();
            let mut expected = items.clone();
            expected.sort();
            assert_eq!(super::sorted_by(items, |a, b| a.cmp(b)), expected, "{len}");
        }
    }
}

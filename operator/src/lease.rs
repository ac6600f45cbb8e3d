//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection` does it: the holder renews the lease every third of its
//! duration; anyone may take it once a whole duration passed without a
//! renewal, or at once when the holder released it (at shutdown);
//! followers look every 2 s. Every write carries the `resourceVersion` it read, so two
//! replicas racing for an expired lease cannot both win (the loser gets a
//! 409). Only the leader writes status.
//!
//! [`decide`] is pure; [`elect`] is the loop around it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// Where the lease is and who we are.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The lease's namespace.
    pub namespace: String,
    /// The lease's name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub duration: Duration,
}

/// What to do about the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds a valid lease: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it, valid until then.
    Follow {
        /// The holder.
        holder: String,
    },
}

/// Decides from the lease as read (`None`: there is none yet).
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: jiff::Timestamp) -> Decision {
    let Some(spec) = lease else { return Decision::Acquire };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire;
    }
    let duration = jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15).max(1)));
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
    match renewed {
        Some(renewed) if renewed + duration > now => Decision::Follow { holder: holder.to_owned() },
        _ => Decision::Acquire,
    }
}

/// The lease spec we write when we acquire or renew.
fn ours(config: &LeaseConfig, previous: Option<&LeaseSpec>, decision: &Decision, now: jiff::Timestamp) -> LeaseSpec {
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    let acquired = match decision {
        Decision::Renew => previous.and_then(|p| p.acquire_time.clone()).unwrap_or(MicroTime(now)),
        _ => MicroTime(now),
    };
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.duration.as_secs().max(1) as i32),
        acquire_time: Some(acquired),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(match decision {
            Decision::Acquire if previous.is_some() => transitions + 1,
            _ => transitions,
        }),
        ..LeaseSpec::default()
    }
}

/// Runs the election on its own task. The receiver says whether this
/// replica leads now; it turns false as soon as a renewal could not be
/// confirmed within the lease's duration (so two replicas never both
/// believe they lead for longer than the API server lets a stale lease
/// stand).
pub fn elect(client: kube::Client, config: LeaseConfig) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        // The holder renews every third of the duration; a follower looks
        // every 2 s at most (client-go's retry period), so a released lease
        // is taken within that.
        let renew = config.duration / 3;
        let retry = renew.min(Duration::from_secs(2));
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            match try_lead(&api, &config).await {
                Ok(true) => last_renewed = Some(tokio::time::Instant::now()),
                Ok(false) => last_renewed = None,
                Err(error) => crate::say!("lease {}/{}: {error}", config.namespace, config.name),
            }
            let leading = last_renewed.is_some_and(|at| at.elapsed() < config.duration);
            tx.send_if_modified(|current| std::mem::replace(current, leading) != leading);
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(if leading { renew } else { retry }).await;
        }
    });
    rx
}

/// Lets go of the lease if we hold it (at shutdown), as client-go's
/// `ReleaseOnCancel` does: the holder is cleared, so another replica takes
/// over at its next round instead of after a whole lease duration.
pub async fn release(client: kube::Client, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let Some(mut lease) = api.get_opt(&config.name).await? else { return Ok(false) };
    let Some(spec) = lease.spec.as_mut() else { return Ok(false) };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(false);
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
    // NB: carries the resourceVersion read: if another replica took it
    // meanwhile, the 409 leaves its lease alone.
    api.replace(&config.name, &PostParams::default(), &lease).await?;
    Ok(true)
}

/// One round: read the lease, decide, write. `Ok(true)` when we hold it.
async fn try_lead(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = jiff::Timestamp::now();
    let current = api.get_opt(&config.name).await?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let decision = decide(spec, &config.identity, now);
    if let Decision::Follow { .. } = decision {
        return Ok(false);
    }
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            resource_version: current.as_ref().and_then(|l| l.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(ours(config, spec, &decision, now)),
    };
    let written = match current {
        None => api.create(&PostParams::default(), &lease).await,
        Some(_) => api.replace(&config.name, &PostParams::default(), &lease).await,
    };
    match written {
        Ok(_) => {
            if decision == Decision::Acquire {
                crate::say!("leading: took lease {}/{} as {}", config.namespace, config.name, config.identity);
            }
            Ok(true)
        }
        // Another replica wrote first: it leads.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: jiff::Timestamp, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(seconds),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_valid_lease_is_followed_an_expired_one_taken() {
        let now = jiff::Timestamp::from_second(1_000_000).expect("time");
        let ago = |s: i64| now - jiff::SignedDuration::from_secs(s);
        assert_eq!(decide(None, "a", now), Decision::Acquire);
        assert_eq!(decide(Some(&spec("a", ago(100), 15)), "a", now), Decision::Renew);
        assert_eq!(decide(Some(&spec("b", ago(5), 15)), "a", now), Decision::Follow { holder: "b".into() });
        assert_eq!(decide(Some(&spec("b", ago(15), 15)), "a", now), Decision::Acquire);
        assert_eq!(decide(Some(&spec("", ago(1), 15)), "a", now), Decision::Acquire);
        let config = LeaseConfig {
            namespace: "n".into(),
            name: "l".into(),
            identity: "a".into(),
            duration: Duration::from_secs(6),
        };
        let taken = ours(&config, Some(&spec("b", ago(20), 15)), &Decision::Acquire, now);
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.lease_duration_seconds, Some(6));
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
    }
}

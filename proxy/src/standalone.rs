//! Standalone mode: a folder of the YAML resources a user would
//! `kubectl apply`, compiled here with `translate`, and watched.
//!
//! The folder is polled every 200 ms (names, sizes and modification times)
//! — no inotify dependency, and it works the same on every filesystem. A
//! change is loaded and compiled; it is installed unless it makes things
//! worse: a file that does not parse, or an object with a False condition
//! that the serving config does not have, keeps the last good config
//! serving. Either way the outcome is logged (naming file and field) and
//! shown on `/status`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use snapshot::status::{ObjectRef, StatusCondition, condition, reason};
use snapshot::{Inputs, Translation, translate};

use crate::metrics::ReloadOutcome;
use crate::state::{Gateway, ObjectReport, ReloadReport, Report, now_rfc3339};

/// A folder's content, compiled.
#[derive(Debug)]
pub struct Loaded {
    /// The translation of every object that loaded.
    pub translation: Translation,
    /// Files that could not be read or parsed: `file: document N: message`.
    pub load_errors: Vec<String>,
    /// Which file each object came from.
    pub origins: BTreeMap<ObjectRef, String>,
}

impl Loaded {
    /// Objects with a False condition.
    fn bad_objects(&self) -> BTreeSet<ObjectRef> {
        self.translation.problems().map(|s| s.object.clone()).collect()
    }

    /// Problems, one line each, naming the file.
    pub fn problem_lines(&self) -> Vec<String> {
        let mut lines = self.load_errors.clone();
        for status in self.translation.problems() {
            let file = self.origins.get(&status.object).map(String::as_str).unwrap_or("?");
            for c in status.conditions.iter().filter(|c| c.is_false()) {
                lines.push(format!("{file}: {}: {}={:?} {}: {}", status.object, c.kind, c.status, c.reason, c.message));
            }
        }
        lines
    }
}

/// The config files of a folder and its subfolders, sorted: `.yaml`,
/// `.yml` and `.json` (JSON is YAML). Hidden files and folders (a leading
/// `.`, as editors' swap and temporary files) are skipped.
pub fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            // The top folder must be readable; a subfolder that is not is
            // reported by load as a file it cannot read.
            Err(e) if folder == dir => return Err(e),
            Err(_) => {
                files.push(folder);
                continue;
            }
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// What changes when a file changes: names, sizes, modification times and
/// permissions (a file made readable again is read again).
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>, u32)>;

/// The folder's fingerprint now.
pub fn fingerprint(dir: &Path) -> Fingerprint {
    use std::os::unix::fs::PermissionsExt;
    yaml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let mode = meta.as_ref().map_or(0, |m| m.permissions().mode());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified, mode)
        })
        .collect()
}

/// When this proxy first saw each object. Files carry no creation time,
/// so standalone mode settles conflicts ("the older wins") by first-seen
/// order: a fresh start counts files and documents in order, and an object
/// added later is newer than everything already seen.
#[derive(Debug, Default)]
pub struct Ages {
    next: i64,
    first_seen: BTreeMap<ObjectRef, i64>,
}

impl Ages {
    /// Stamps each object's `creationTimestamp` with its first-seen rank.
    fn stamp(&mut self, inputs: &mut Inputs) {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
        let mut stamp = |kind: &str, meta: &mut ObjectMeta| {
            let object =
                ObjectRef::new(kind, meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or(""));
            let rank = *self.first_seen.entry(object).or_insert_with(|| {
                self.next += 1;
                self.next
            });
            // NB: the rank in seconds after the epoch: only the order counts.
            meta.creation_timestamp = jiff::Timestamp::from_second(rank).ok().map(Time);
        };
        inputs.tenants.iter_mut().for_each(|o| stamp("Tenant", &mut o.metadata));
        inputs.routes.iter_mut().for_each(|o| stamp("ApiRoute", &mut o.metadata));
        inputs.ingresses.iter_mut().for_each(|o| stamp("Ingress", &mut o.metadata));
        inputs.subscriptions.iter_mut().for_each(|o| stamp("Subscription", &mut o.metadata));
        inputs.providers.iter_mut().for_each(|o| stamp("AiProvider", &mut o.metadata));
    }
}

/// Reads, parses and compiles a folder as a fresh start would.
pub fn load(dir: &Path) -> Loaded {
    load_with(dir, &mut Ages::default())
}

/// Reads, parses and compiles a folder; objects are as old as `ages`
/// says (new ones are stamped newest).
pub fn load_with(dir: &Path, ages: &mut Ages) -> Loaded {
    let mut inputs = Inputs { ages: snapshot::AgeSource::FirstSeen, ..Inputs::default() };
    let mut load_errors = Vec::new();
    let mut origins = BTreeMap::new();
    match yaml_files(dir) {
        Err(e) => load_errors.push(format!("{}: cannot read the folder: {e}", dir.display())),
        Ok(files) => {
            if files.is_empty() {
                load_errors.push(format!("{}: no .yaml, .yml or .json files", dir.display()));
            }
            for file in files {
                let name = file.display().to_string();
                let text = match std::fs::read_to_string(&file) {
                    Ok(t) => t,
                    Err(e) => {
                        load_errors.push(format!("{name}: cannot read: {e}"));
                        continue;
                    }
                };
                let mut one = Inputs::default();
                match one.load_yaml(&name, &text) {
                    Ok(_) => {
                        ages.stamp(&mut one);
                        // NB: two definitions of one object are an error,
                        // never a silent pick of one of them.
                        for object in object_refs(&one) {
                            match origins.get(&object) {
                                Some(first) => load_errors.push(format!(
                                    "{name}: {object} is defined again (first in {first}); define each object once"
                                )),
                                None => {
                                    origins.insert(object, name.clone());
                                }
                            }
                        }
                        inputs.extend(one);
                    }
                    Err(e) => load_errors.push(e.to_string()),
                }
            }
        }
    }
    // Objects that are gone are forgotten: added again, they are new.
    ages.first_seen.retain(|object, _| origins.contains_key(object));
    Loaded { translation: translate(&inputs), load_errors, origins }
}

fn object_refs(inputs: &Inputs) -> Vec<ObjectRef> {
    fn refs<'a, T: 'a>(
        kind: &str,
        items: &'a [T],
        meta: impl Fn(&'a T) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Vec<ObjectRef> {
        items
            .iter()
            .map(|i| {
                let m = meta(i);
                ObjectRef::new(kind, m.namespace.as_deref().unwrap_or(""), m.name.as_deref().unwrap_or(""))
            })
            .collect()
    }
    let mut out = refs("Tenant", &inputs.tenants, |t| &t.metadata);
    out.extend(refs("ApiRoute", &inputs.routes, |r| &r.metadata));
    out.extend(refs("Subscription", &inputs.subscriptions, |s| &s.metadata));
    out.extend(refs("AiProvider", &inputs.providers, |p| &p.metadata));
    out.extend(refs("Ingress", &inputs.ingresses, |i| &i.metadata));
    out.extend(refs("Secret", &inputs.secrets, |s| &s.metadata));
    out.extend(refs("Service", &inputs.services, |s| &s.metadata));
    out
}

/// Decides whether to install a load, installs it if so, and updates the
/// report. Returns whether it was installed. The load is consumed: its
/// snapshot and statuses move into the gateway, never copied (with
/// thousands of routes, a copy would double the memory a reload needs).
pub fn apply(gateway: &Gateway, loaded: Loaded) -> bool {
    let previous = gateway.report.load_full();
    let serving_bad: BTreeSet<ObjectRef> =
        previous.statuses.iter().filter(|s| s.status.has_false()).map(|s| s.status.object.clone()).collect();
    let first = !gateway.is_ready();
    let unreadable = !loaded.load_errors.is_empty();
    let worse = unreadable || loaded.bad_objects().difference(&serving_bad).next().is_some();
    let unchanged = gateway.current.load().as_ref().is_some_and(|c| *c.version == loaded.translation.snapshot.version);
    let problems = loaded.problem_lines();
    // At start-up there is no last good config: serve what compiles, but
    // only once every file has been read and parsed (an empty folder, or a
    // file that does not parse, is not a config: /readyz says so).
    let install = if first { !unreadable } else { !worse };
    let outcome = if !install {
        "rejected"
    } else if unchanged {
        "unchanged"
    } else {
        "installed"
    };
    let Loaded { translation: Translation { snapshot, statuses }, load_errors, origins } = loaded;
    let (version, route_count) = (snapshot.version.clone(), snapshot.routes.len());
    if install && !unchanged {
        gateway.install(snapshot);
        gateway.metrics.reload(ReloadOutcome::Installed);
    } else if !install {
        gateway.metrics.reload(ReloadOutcome::Rejected);
    }
    for line in &problems {
        crate::say!("config problem: {line}");
    }
    // Routes the proxy cannot enforce are in the snapshot but not served.
    let unservable = if install {
        gateway.current.load().as_ref().map(|c| c.unservable.clone()).unwrap_or_default()
    } else {
        Vec::new()
    };
    for (object, fields) in &unservable {
        let file = origins.get(object).map(String::as_str).unwrap_or("?");
        crate::say!(
            "config problem: {file}: {object}: not served (503): {fields} cannot be enforced by this proxy yet"
        );
    }
    match outcome {
        "rejected" => crate::say!(
            "config change rejected; still serving snapshot {}",
            previous.version.as_deref().unwrap_or("(none)")
        ),
        "installed" => crate::say!("serving snapshot {} ({} routes)", version, route_count),
        _ => {}
    }
    let was_rejected = previous.last_reload.as_ref().is_some_and(|r| r.outcome == "rejected");
    if install && was_rejected {
        crate::say!("config is good again: every file loads");
    }
    gateway.metrics.config_current(install);
    let reload = ReloadReport { at: now_rfc3339(), outcome, problems: if install { Vec::new() } else { problems } };
    let report = if install {
        Report {
            source: previous.source.clone(),
            version: Some(version),
            installed_at: if unchanged { previous.installed_at.clone() } else { Some(now_rfc3339()) },
            last_reload: Some(reload),
            load_errors,
            statuses: statuses
                .into_iter()
                .map(|mut status| {
                    if let Some((_, fields)) = unservable.iter().find(|(o, _)| *o == status.object) {
                        status.set(StatusCondition::fail(
                            condition::PROGRAMMED,
                            reason::UNSUPPORTED_BY_PROXY,
                            format!("{fields}: not supported by this proxy yet, so the route is not served (503)."),
                        ));
                    }
                    ObjectReport { file: origins.get(&status.object).cloned(), status }
                })
                .collect(),
        }
    } else {
        // NB: the folder's load errors now, not those of the config served.
        Report { last_reload: Some(reload), load_errors, ..(*previous).clone() }
    };
    gateway.report.store(Arc::new(report));
    install
}

/// Loads, applies and then watches a folder on a thread of its own (the
/// config thread) until `stop` is set. Returns once the first load has
/// been applied, with whether it was installed. Every load runs on that
/// thread: see [`settle_memory`].
pub fn watch(
    gateway: Arc<Gateway>,
    dir: PathBuf,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<(std::thread::JoinHandle<()>, bool)> {
    let (first, installed) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new().name("sluice-config".into()).spawn(move || {
        // NB: the fingerprint is taken before the first load, so a change
        // made while it is read is not missed.
        let seen = fingerprint(&dir);
        let mut ages = Ages::default();
        let _ = first.send(apply(&gateway, load_with(&dir, &mut ages)));
        let mut watcher = Watcher::new(seen, ages);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(POLL);
            let served = || served_files(&gateway);
            if let Some(loaded) = watcher.poll(&dir, fingerprint(&dir), Instant::now(), served) {
                apply(&gateway, loaded);
            }
            settle_memory();
        }
    })?;
    let installed = installed.recv().map_err(|_| std::io::Error::other("the config thread stopped"))?;
    Ok((thread, installed))
}

/// Lets the allocator give back what a load left free. mimalloc returns
/// freed memory to the OS only when the thread that freed it frees a page
/// again after the purge delay (1 s); a config thread that loaded 10,000
/// routes and then sat idle would keep its peak (105 MiB of RSS instead of
/// 67 MiB). Each poll allocates and frees one page of small blocks (64 KiB,
/// five times a second).
fn settle_memory() {
    let blocks: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 1000]).collect();
    std::hint::black_box(blocks);
}

/// How often the folder is looked at.
const POLL: Duration = Duration::from_millis(200);

/// How long a file that lost every object must stay so before the change
/// is applied (an editor that truncates, then writes, is caught between).
const EMPTIED_HOLD: Duration = Duration::from_secs(2);

/// Decides when a changed folder is read: only once its fingerprint has
/// not moved for a whole poll (a file being written is never read half
/// way), and — when a file that still exists lost every object — only
/// once that has lasted [`EMPTIED_HOLD`].
#[derive(Debug)]
struct Watcher {
    /// The fingerprint at the previous poll.
    last: Fingerprint,
    /// The fingerprint last loaded.
    loaded: Fingerprint,
    /// A change that empties a file, and since when it is seen.
    held: Option<(Fingerprint, Instant)>,
    /// When each object was first seen.
    ages: Ages,
}

impl Watcher {
    fn new(seen: Fingerprint, ages: Ages) -> Self {
        Watcher { last: seen.clone(), loaded: seen, held: None, ages }
    }

    /// One poll: the load to apply, if the folder is ready to be read.
    /// `served` lists the files that hold objects of the config served.
    fn poll(
        &mut self,
        dir: &Path,
        now: Fingerprint,
        at: Instant,
        served: impl FnOnce() -> BTreeSet<String>,
    ) -> Option<Loaded> {
        if now != self.last {
            // Still changing: look again at the next poll.
            self.last = now;
            return None;
        }
        if now == self.loaded {
            return None;
        }
        // A held change is not read again until its hold is over.
        if self.held.as_ref().is_some_and(|(held, since)| *held == now && at.duration_since(*since) < EMPTIED_HOLD) {
            return None;
        }
        let loaded = load_with(dir, &mut self.ages);
        let present: BTreeSet<String> = now.iter().map(|(p, ..)| p.display().to_string()).collect();
        let has_objects = files_with_objects(&loaded);
        // NB: a file that does not parse has no objects either; the reload
        // is rejected for it, with its error, rather than held.
        let unreadable = |file: &str| loaded.load_errors.iter().any(|e| e.starts_with(&format!("{file}:")));
        let served = served();
        let emptied: Vec<&String> =
            served.iter().filter(|f| present.contains(*f) && !has_objects.contains(*f) && !unreadable(f)).collect();
        if !emptied.is_empty() {
            match &self.held {
                // Held long enough: apply.
                Some((held, _)) if *held == now => {}
                _ => {
                    for file in emptied {
                        crate::say!(
                            "{file}: no objects left in it; applying that only if it stays so for {} s (write files atomically: write a temporary file, then rename it)",
                            EMPTIED_HOLD.as_secs()
                        );
                    }
                    self.held = Some((now, at));
                    return None;
                }
            }
        }
        self.held = None;
        self.loaded = now;
        Some(loaded)
    }
}

/// The files that hold at least one object.
fn files_with_objects(loaded: &Loaded) -> BTreeSet<String> {
    loaded.origins.values().cloned().collect()
}

/// The files that hold objects of the config served.
fn served_files(gateway: &Gateway) -> BTreeSet<String> {
    gateway.report.load().statuses.iter().filter_map(|s| s.file.clone()).collect()
}

//! Shared watches: one list-and-watch per distinct set of objects (kind, namespace,
//! label and field selectors), however many invariants read it.
//!
//! Each [`SharedWatch`] runs kube-runtime's [`watcher`] (list, then watch from the
//! list's resourceVersion; it relists by itself on `410 Gone`) in one task, started when
//! a probe first asks for it. Every event goes to the watch's [`Consumer`]s (one per
//! invariant), which keep only what their invariant needs (one number per object, or
//! repeat counts), never the objects themselves. That is kube's reflector pattern with a
//! store of derived values instead of objects: an e2e cluster has thousands of pods,
//! and a value per pod is all an invariant reads.
//!
//! A watch is *synced* once its list is complete. Any error other than `410 Gone`
//! (API server down, forbidden, a broken stream) makes it *failed*: its probes give failed
//! samples with that error, never the last values they saw, and the watch starts over
//! with a fresh list after a backoff (0.5 s doubling to 5 s, with jitter; 30 s after the
//! API server refused the agent's credentials or RBAC) until a list completes again.
//! A panic in the watch task (a consumer's CEL evaluation, say, meeting an object a bug
//! cannot handle) is such a failure too, of class `panic`: the watch is failed with a
//! message saying it is a bug, and starts over after 30 s, like a refusal (a bug does
//! not go away in seconds); the relist rebuilds every consumer's values, so a panic on
//! one odd object keeps the watch failed only while that object exists. Starting over
//! rather than resuming from the last resourceVersion
//! is what makes "synced again" observable: a resumed watch says nothing until the next
//! change, which may be minutes away. Lists are served from the API server's watch cache
//! (`resourceVersion=0`), like client-go's informers, so a relist does not reach etcd.

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::discovery::{Scope, verbs};
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch as state_channel;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::error::{from_client_error, from_watcher_error};
use crate::sample::{ErrorClass, ProbeError};

/// Seconds after which the API server ends each watch request (the watcher then resumes
/// from the last resourceVersion). Short enough that a silently dead connection is found
/// within about a minute (see the client's read timeout), long enough to cost one
/// request a minute per watch.
pub const WATCH_TIMEOUT_SECS: u32 = 60;

/// Shortest wait before a failed watch starts over.
const BACKOFF_MIN: Duration = Duration::from_millis(500);

/// Longest wait before a failed watch starts over: the longest a recovered API server
/// goes unnoticed by the watch's invariants.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Wait before a watch the API server refused (401, 403), or whose task panicked, tries
/// again: RBAC, credentials and bugs are not fixed in seconds, and every refusal is
/// logged by the watcher.
const BACKOFF_REFUSED: Duration = Duration::from_secs(30);

/// How long the watch task may process events before it lets other tasks run (the agent
/// runs on one thread; a relist of thousands of objects must not stall sampling).
const YIELD_AFTER: Duration = Duration::from_millis(5);

/// Which objects a watch follows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchKey {
    /// `v1` or `group/version`.
    pub api_version: String,
    /// The kind, e.g. `Node`.
    pub kind: String,
    /// One namespace, or all when `None`.
    pub namespace: Option<String>,
    /// Label selector.
    pub label_selector: Option<String>,
    /// Field selector.
    pub field_selector: Option<String>,
}

impl fmt::Display for WatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.api_version, self.kind)?;
        if let Some(ns) = &self.namespace {
            write!(f, " in {ns}")?;
        }
        if let Some(l) = &self.label_selector {
            write!(f, " -l {l}")?;
        }
        if let Some(s) = &self.field_selector {
            write!(f, " --field-selector {s}")?;
        }
        Ok(())
    }
}

/// An object's identity within a watch: namespace (for namespaced kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// One object as consumers see it: its JSON form as the API server sent it, without
/// `metadata.managedFields`, with `apiVersion` and `kind` always set.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchedObject {
    /// Namespace and name.
    pub key: ObjectKey,
    /// The object.
    pub object: serde_json::Value,
}

impl WatchedObject {
    /// Builds the consumer view of `object`, a `kind` object of `api_version`.
    pub fn new(object: &DynamicObject, api_version: &str, kind: &str) -> Self {
        let key = ObjectKey {
            namespace: object.metadata.namespace.clone(),
            name: object.metadata.name.clone().unwrap_or_default(),
        };
        let mut json = serde_json::to_value(object)
            .unwrap_or_else(|_| serde_json::Value::Object(serde_json::Map::new()));
        if let Some(fields) = json.as_object_mut() {
            // List items come without apiVersion and kind; watch events with them.
            fields
                .entry("apiVersion")
                .or_insert_with(|| api_version.into());
            fields.entry("kind").or_insert_with(|| kind.into());
            if let Some(meta) = fields.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.remove("managedFields");
            }
        }
        WatchedObject { key, object: json }
    }
}

/// A change the watch saw, in the order it saw them.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    /// A (re)list starts: the objects [`Change::Listed`] from now until
    /// [`Change::Relisted`] replace the current set.
    Relisting,
    /// An object of the list in progress.
    Listed(&'a WatchedObject),
    /// The list is complete: objects not listed are gone.
    Relisted,
    /// An object was added or changed.
    Applied(&'a WatchedObject),
    /// An object was deleted.
    Deleted(&'a WatchedObject),
}

/// Something that follows a watch's objects, e.g. one invariant's values per object.
/// Called from the watch task, one change at a time; readers lock their own state.
pub trait Consumer: Send + Sync + 'static {
    /// Takes one change into account.
    fn apply(&self, change: Change<'_>);
}

/// Whether a watch's consumers can be read.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncState {
    /// The first list has not completed yet.
    Pending,
    /// The list completed and the watch is following changes.
    Synced,
    /// The watch failed with this error; it is starting over.
    Failed(ProbeError),
}

/// One watch, shared by the probes of every invariant on the same objects.
pub struct SharedWatch {
    key: WatchKey,
    client: kube::Client,
    server: String,
    consumers: Mutex<Vec<Arc<dyn Consumer>>>,
    state: state_channel::Sender<SyncState>,
    started: AtomicBool,
    shutdown: CancellationToken,
}

impl fmt::Debug for SharedWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedWatch")
            .field("key", &self.key)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl SharedWatch {
    /// Which objects this watch follows.
    pub fn key(&self) -> &WatchKey {
        &self.key
    }

    /// Adds a consumer. All consumers must be added before the first probe waits on the
    /// watch (probes are built before sampling starts, so they are).
    pub fn subscribe(&self, consumer: Arc<dyn Consumer>) {
        if self.started.load(Ordering::Acquire) {
            tracing::error!(watch = %self.key, "a consumer was added to a running watch; it misses the objects listed before (a bug)");
        }
        lock(&self.consumers).push(consumer);
    }

    /// The current state, without waiting.
    pub fn state(&self) -> SyncState {
        self.state.borrow().clone()
    }

    /// Starts the watch if it is not running, then waits until it is synced (`Ok`) or
    /// failed (`Err` with the watch's error). The caller bounds the wait (the sample's
    /// timeout), so a list that takes too long is a timed-out sample.
    pub async fn wait_synced(self: &Arc<Self>) -> Result<(), ProbeError> {
        self.ensure_started();
        let mut rx = self.state.subscribe();
        loop {
            let settled = match &*rx.borrow_and_update() {
                SyncState::Synced => Some(Ok(())),
                SyncState::Failed(e) => Some(Err(e.clone())),
                SyncState::Pending => None,
            };
            if let Some(result) = settled {
                return result;
            }
            if rx.changed().await.is_err() {
                return Err(ProbeError::new(ErrorClass::Other, "the watch stopped"));
            }
        }
    }

    fn ensure_started(self: &Arc<Self>) {
        if !self.started.swap(true, Ordering::AcqRel) {
            let watch = self.clone();
            tokio::spawn(async move {
                let shutdown = watch.shutdown.clone();
                tokio::select! {
                    () = watch.run() => {}
                    () = shutdown.cancelled() => {}
                }
            });
        }
    }

    /// Lists and watches until shutdown, starting over after every failure.
    async fn run(&self) {
        let consumers: Vec<Arc<dyn Consumer>> = lock(&self.consumers).clone();
        let mut backoff = Backoff::default();
        let mut resource = None;
        loop {
            // A panic anywhere in the list-and-watch (above all in the consumers, which
            // run here, outside the scheduler's catch_unwind) must not end the task: the
            // state would stay `Synced` and the probes would report stale values.
            // `resource` and `backoff` stay valid whenever the panic happens, and every
            // consumer's values are rebuilt by the next list.
            let attempt = self.list_and_watch(&consumers, &mut resource, &mut backoff);
            let error = match AssertUnwindSafe(attempt).catch_unwind().await {
                Ok(error) => error,
                Err(panic) => self.panicked(panic.as_ref()),
            };
            let refused = matches!(
                error.class,
                ErrorClass::Forbidden | ErrorClass::Unauthorized | ErrorClass::Panic
            );
            self.failed(error);
            tokio::time::sleep(backoff.next_delay(refused)).await;
        }
    }

    /// One list-and-watch, until it fails; returns the failure.
    async fn list_and_watch(
        &self,
        consumers: &[Arc<dyn Consumer>],
        resource: &mut Option<(ApiResource, Scope)>,
        backoff: &mut Backoff,
    ) -> ProbeError {
        let (api_resource, scope) = match resource.clone() {
            Some(found) => found,
            None => match self.discover().await {
                Ok(found) => {
                    *resource = Some(found.clone());
                    found
                }
                Err(e) => return e,
            },
        };
        let api: Api<DynamicObject> = match (&self.key.namespace, scope) {
            (Some(ns), Scope::Namespaced) => {
                Api::namespaced_with(self.client.clone(), ns, &api_resource)
            }
            (Some(ns), Scope::Cluster) => {
                return ProbeError::new(
                    ErrorClass::Other,
                    format!(
                        "{} is cluster-scoped, so it has no namespace; remove namespace {ns:?} \
                         from the probe",
                        self.key.kind
                    ),
                );
            }
            (None, _) => Api::all_with(self.client.clone(), &api_resource),
        };
        let mut config = watcher::Config::default()
            .any_semantic()
            .timeout(WATCH_TIMEOUT_SECS);
        if let Some(labels) = &self.key.label_selector {
            config = config.labels(labels);
        }
        if let Some(fields) = &self.key.field_selector {
            config = config.fields(fields);
        }
        let mut stream = std::pin::pin!(watcher::watcher(api, config));
        let mut listed = 0usize;
        let mut since_yield = Instant::now();
        let (api_version, kind) = (&self.key.api_version, &self.key.kind);
        while let Some(item) = stream.next().await {
            match item {
                Ok(Event::Init) => {
                    listed = 0;
                    dispatch(consumers, Change::Relisting);
                }
                Ok(Event::InitApply(object)) => {
                    listed += 1;
                    let object = WatchedObject::new(&object, api_version, kind);
                    dispatch(consumers, Change::Listed(&object));
                }
                Ok(Event::InitDone) => {
                    dispatch(consumers, Change::Relisted);
                    self.synced(listed);
                    backoff.reset();
                }
                Ok(Event::Apply(object)) => {
                    let object = WatchedObject::new(&object, api_version, kind);
                    dispatch(consumers, Change::Applied(&object));
                }
                Ok(Event::Delete(object)) => {
                    let object = WatchedObject::new(&object, api_version, kind);
                    dispatch(consumers, Change::Deleted(&object));
                }
                // The watch fell out of the API server's window; the watcher lists again
                // on its own and the values stay good until that list replaces them.
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    tracing::debug!(watch = %self.key, "watch expired (410 Gone); listing again");
                }
                Err(e) => return from_watcher_error(&e, &self.server),
            }
            if since_yield.elapsed() >= YIELD_AFTER {
                tokio::task::yield_now().await;
                since_yield = Instant::now();
            }
        }
        ProbeError::new(ErrorClass::Other, "the watch ended")
    }

    /// Finds the resource (plural name) and scope of the watched kind.
    async fn discover(&self) -> Result<(ApiResource, Scope), ProbeError> {
        let (group, version) = self
            .key
            .api_version
            .split_once('/')
            .unwrap_or(("", &self.key.api_version));
        let gvk = GroupVersionKind::gvk(group, version, &self.key.kind);
        let (api_version, kind) = (&self.key.api_version, &self.key.kind);
        match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok((resource, capabilities)) => {
                if !capabilities.supports_operation(verbs::WATCH)
                    || !capabilities.supports_operation(verbs::LIST)
                {
                    return Err(ProbeError::new(
                        ErrorClass::Other,
                        format!("{api_version} {kind} cannot be listed and watched"),
                    ));
                }
                Ok((resource, capabilities.scope))
            }
            Err(kube::Error::Discovery(_)) => Err(ProbeError::new(
                ErrorClass::Other,
                format!(
                    "the API server serves no kind {kind} in {api_version}; check apiVersion \
                     and kind (kubectl api-resources lists them)"
                ),
            )),
            Err(kube::Error::Api(status)) if status.code == 404 => Err(ProbeError::new(
                ErrorClass::Other,
                format!(
                    "the API server does not serve {api_version}; check apiVersion (kubectl \
                     api-versions lists them)"
                ),
            )),
            Err(e) => Err(from_client_error(&e, &self.server)),
        }
    }

    /// The failure a panic in the watch task stands for.
    fn panicked(&self, panic: &(dyn std::any::Any + Send)) -> ProbeError {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        tracing::error!(watch = %self.key, panic = %what, "watch task panicked; the watch is failed and starts over (this is a bug, please report it)");
        ProbeError::new(
            ErrorClass::Panic,
            format!(
                "the watch of {} stopped: internal error (panic: {what}); this is a bug in \
                 invariant-agent",
                self.key
            ),
        )
    }

    fn synced(&self, listed: usize) {
        let previous = self.state.send_replace(SyncState::Synced);
        match previous {
            SyncState::Pending => {
                tracing::info!(watch = %self.key, objects = listed, "watch synced");
            }
            SyncState::Failed(_) => {
                tracing::info!(watch = %self.key, objects = listed, "watch synced again after a failure");
            }
            SyncState::Synced => {
                tracing::debug!(watch = %self.key, objects = listed, "watch listed again");
            }
        }
    }

    fn failed(&self, error: ProbeError) {
        let previous = self.state.send_replace(SyncState::Failed(error.clone()));
        let repeated = matches!(&previous, SyncState::Failed(p) if p.class == error.class);
        if repeated {
            tracing::debug!(watch = %self.key, error = %error, "watch still failing");
        } else {
            tracing::warn!(watch = %self.key, error = %error, "watch failed; its invariants get failed samples until it lists again");
        }
    }
}

fn dispatch(consumers: &[Arc<dyn Consumer>], change: Change<'_>) {
    for consumer in consumers {
        consumer.apply(change);
    }
}

/// Locks `m`, recovering from a panic in another holder (the data stays consistent:
/// every critical section leaves it valid).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every watch of one run, by key; stops them all when dropped.
pub struct WatchRegistry {
    client: kube::Client,
    server: String,
    watches: Mutex<HashMap<WatchKey, Arc<SharedWatch>>>,
    shutdown: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl fmt::Debug for WatchRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchRegistry")
            .field("server", &self.server)
            .field("watches", &lock(&self.watches).len())
            .finish_non_exhaustive()
    }
}

impl WatchRegistry {
    /// A registry whose watches use `client` (talking to `server`, `host:port`).
    pub fn new(client: kube::Client, server: String) -> Self {
        let shutdown = CancellationToken::new();
        WatchRegistry {
            client,
            server,
            watches: Mutex::new(HashMap::new()),
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
        }
    }

    /// The watch of `key`, created (not started) on first use.
    pub fn watch(&self, key: WatchKey) -> Arc<SharedWatch> {
        lock(&self.watches)
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(SharedWatch {
                    key,
                    client: self.client.clone(),
                    server: self.server.clone(),
                    consumers: Mutex::new(Vec::new()),
                    state: state_channel::Sender::new(SyncState::Pending),
                    started: AtomicBool::new(false),
                    shutdown: self.shutdown.child_token(),
                })
            })
            .clone()
    }

    /// How many distinct watches the probes share.
    pub fn len(&self) -> usize {
        lock(&self.watches).len()
    }

    /// Whether no probe uses a watch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Exponential backoff with jitter between attempts of a failing watch.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The next wait: the current step ±20 %, then the step doubles up to the maximum;
    /// 30 s ±20 % after a refusal (`refused`).
    fn next_delay(&mut self, refused: bool) -> Duration {
        let step = if refused { BACKOFF_REFUSED } else { self.next };
        self.next = (self.next * 2).min(BACKOFF_MAX);
        step.mul_f64(0.8 + 0.4 * fastrand::f64())
    }

    /// Back to the shortest wait, after a success.
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let steps: Vec<Duration> = (0..6).map(|_| b.next_delay(false)).collect();
        let bounds = [0.5, 1.0, 2.0, 4.0, 5.0, 5.0];
        for (d, base) in steps.iter().zip(bounds) {
            let s = d.as_secs_f64();
            assert!(
                s >= base * 0.8 - 1e-9 && s <= base * 1.2 + 1e-9,
                "{s} vs {base}"
            );
        }
        b.reset();
        assert!(b.next_delay(false) <= Duration::from_millis(600));
        let refused = b.next_delay(true).as_secs_f64();
        assert!((24.0..=36.0).contains(&refused), "{refused}");
    }

    #[test]
    fn watched_objects_drop_managed_fields_and_carry_their_kind() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "managedFields": [{"manager": "kubectl"}]},
            "status": {"phase": "Running"}
        }))
        .unwrap();
        let w = WatchedObject::new(&object, "v1", "Node");
        assert_eq!(
            w.key,
            ObjectKey {
                namespace: None,
                name: "n1".into()
            }
        );
        assert_eq!(w.object["kind"], "Node");
        assert_eq!(w.object["apiVersion"], "v1");
        assert_eq!(w.object["status"]["phase"], "Running");
        assert!(w.object["metadata"].get("managedFields").is_none());
    }

    /// A client whose "API server" serves one Node, `n1`, and watches that never answer;
    /// counts the lists.
    fn one_node_client(lists: Arc<std::sync::atomic::AtomicUsize>) -> kube::Client {
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let lists = lists.clone();
            async move {
                let path = request.uri().path().to_string();
                let query = request.uri().query().unwrap_or("").to_string();
                let body = match path.as_str() {
                    "/api/v1" => serde_json::json!({
                        "kind": "APIResourceList", "groupVersion": "v1",
                        "resources": [{"name": "nodes", "singularName": "node",
                            "namespaced": false, "kind": "Node",
                            "verbs": ["get", "list", "watch"]}]
                    }),
                    "/api/v1/nodes" if query.contains("watch=true") => {
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                    "/api/v1/nodes" => {
                        lists.fetch_add(1, Ordering::SeqCst);
                        serde_json::json!({
                            "kind": "NodeList", "apiVersion": "v1",
                            "metadata": {"resourceVersion": "7"},
                            "items": [{"metadata": {"name": "n1", "resourceVersion": "7"}}]
                        })
                    }
                    other => panic!("unexpected request {other}"),
                };
                let body = kube::client::Body::from(serde_json::to_vec(&body).unwrap());
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            }
        });
        kube::Client::new(service, "default")
    }

    /// Panics on the object it is given, like a consumer meeting a bug.
    struct Panicking;

    impl Consumer for Panicking {
        fn apply(&self, change: Change<'_>) {
            if let Change::Listed(object) = change {
                panic!("cannot handle {}", object.key);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_consumer_fails_the_watch_and_it_starts_over() {
        let lists = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let registry = WatchRegistry::new(one_node_client(lists.clone()), "h:443".into());
        let watch = registry.watch(WatchKey {
            api_version: "v1".into(),
            kind: "Node".into(),
            namespace: None,
            label_selector: None,
            field_selector: None,
        });
        watch.subscribe(Arc::new(Panicking));
        let error = tokio::time::timeout(Duration::from_secs(10), watch.wait_synced())
            .await
            .expect("the watch must not stay pending")
            .unwrap_err();
        assert_eq!(error.class, ErrorClass::Panic);
        assert_eq!(
            error.message,
            "the watch of v1 Node stopped: internal error (panic: cannot handle n1); this is a \
             bug in invariant-agent"
        );
        assert_eq!(lists.load(Ordering::SeqCst), 1);
        // The task lives on: after the long backoff it lists again, and fails again.
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert_eq!(lists.load(Ordering::SeqCst), 2);
        assert!(matches!(watch.state(), SyncState::Failed(e) if e.class == ErrorClass::Panic));
    }

    #[test]
    fn keys_read_like_kubectl() {
        let key = WatchKey {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: Some("kube-system".into()),
            label_selector: Some("k8s-app=kube-dns".into()),
            field_selector: None,
        };
        assert_eq!(key.to_string(), "v1 Pod in kube-system -l k8s-app=kube-dns");
    }
}

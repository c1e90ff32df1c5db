//! Leader election among the agents of a cluster: which one runs the cluster-scoped
//! invariants.
//!
//! Node-scoped invariants run in every agent. Cluster-scoped ones (the API server's
//! health, cluster-wide object counts) need one observer per cluster, not one per node:
//! with `--leader-elect`, only the agent holding a `coordination.k8s.io` Lease runs them,
//! and another takes over when it dies. The protocol is client-go's
//! (`k8s.io/client-go/tools/leaderelection`), with its timings, so it behaves as
//! operators know from kube-controller-manager:
//!
//! * Every [`RETRY_PERIOD`] (2 s) each agent runs one round. The leader renews with one
//!   `update` of the Lease carrying the `resourceVersion` it last saw (it reads the Lease
//!   first only when that fails); every other agent reads the Lease (one GET, served from
//!   the API server's watch cache: `resourceVersion=0`, no etcd read; safe because every
//!   write is checked against the `resourceVersion` read, so a stale read can only delay
//!   a takeover, never let two agents lead).
//! * An agent takes the Lease only when nobody holds it (released, or never held), or when
//!   its holder has not renewed it for its `leaseDurationSeconds` (15 s) **as measured by
//!   this agent's own clock** since it last saw the Lease change. Remote timestamps
//!   (`renewTime`) are written for people and never compared with the local clock, so
//!   clock skew between nodes cannot make an agent take a Lease early.
//! * Every write carries the `resourceVersion` that was read (optimistic concurrency):
//!   when two agents race, the API server accepts one write and answers the other 409
//!   Conflict, which means someone else won.
//! * A leader that could not renew for [`RENEW_DEADLINE`] (10 s: requests failing or
//!   hanging) steps down, 5 s before anyone may take over, so two agents do not run the
//!   cluster-scoped invariants at once. A leader that reads the Lease held by someone
//!   else steps down at once.
//! * On a clean shutdown the leader releases the Lease (no holder, duration 1 s), so the
//!   next agent takes over at its next round, within about [`RETRY_PERIOD`], instead of
//!   after the lease duration.
//!
//! The Lease also carries the run id the agents share when none is configured
//! ([`RUN_ID_ANNOTATION`], see [`agree_on_run_id`]), so the cluster-scoped series that
//! successive leaders export, and every agent's report, name the same run.
//!
//! The outcome is a `watch` channel of "this agent leads" ([`LeaderElection::leading`]):
//! the scheduler runs cluster-scoped invariants only while it is true and the engine
//! records when this agent led. The election's logic ([`Candidate`]) is given the time
//! (the wall clock only stamps `renewTime` for people) and does its I/O through a
//! [`LeaseStore`], so it is tested with a fake clock and store.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, GetParams, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::KubeContext;
use crate::config::spec::ConnectionMode;

/// How long a holder's Lease lasts without renewal before another agent may take it
/// (`leaseDurationSeconds`; client-go's default).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// How long a leader may fail to renew before it steps down (client-go's default);
/// shorter than [`LEASE_DURATION`], so it stops before anyone else may start.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// Time between two rounds of one agent (client-go's default).
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// `leaseDurationSeconds` of a released Lease, as client-go writes it.
pub const RELEASED_LEASE_DURATION: Duration = Duration::from_secs(1);

/// How long releasing the Lease may take on shutdown (inside the 2 s shutdown budget).
pub const RELEASE_DEADLINE: Duration = Duration::from_secs(1);

/// How long an agent tries at start to read (or write) the run id on the Lease before it
/// gives up and uses an id of its own (an API server down at start must not keep the
/// agent from observing).
pub const RUN_ID_DEADLINE: Duration = Duration::from_secs(10);

/// Annotation on the Lease carrying the run id every agent of the deployment uses when
/// none is configured (`--run-id`, `$PROW_JOB_ID`, `$BUILD_ID`). Written once, by the
/// agent that creates the Lease (or finds it without one); never replaced, so agents that
/// start later join the same run. Delete the Lease to start a new one.
pub const RUN_ID_ANNOTATION: &str = "invariant-agent/run-id";

/// The Lease's name unless `--leader-elect-lease` says otherwise (manifests/rbac.yaml
/// grants access to this name only).
pub const DEFAULT_LEASE_NAME: &str = "invariant-agent";

/// Leader election flags (shared by `run` and `demo`).
#[derive(Clone, Debug, clap::Args)]
pub struct LeaderElectArgs {
    /// Run cluster-scoped invariants only in the one agent holding a Lease (for a
    /// DaemonSet: one agent per node, one of them judges the cluster); another agent takes
    /// over when it stops. Without it, this agent runs every invariant. Needs Kubernetes
    /// credentials (--kubeconfig, or the pod's ServiceAccount) allowed to get, create and
    /// update the Lease. No Lease traffic when no invariant is cluster-scoped.
    #[arg(long, help_heading = "Leader election")]
    pub leader_elect: bool,
    /// Namespace of the Lease. Default: $POD_NAMESPACE (the DaemonSet sets it from the
    /// downward API), else the kubeconfig context's namespace, else the pod
    /// ServiceAccount's.
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "POD_NAMESPACE",
        help_heading = "Leader election"
    )]
    pub leader_elect_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(
        long,
        value_name = "NAME",
        default_value = DEFAULT_LEASE_NAME,
        help_heading = "Leader election"
    )]
    pub leader_elect_lease: String,
}

impl Default for LeaderElectArgs {
    fn default() -> Self {
        LeaderElectArgs {
            leader_elect: false,
            leader_elect_namespace: None,
            leader_elect_lease: DEFAULT_LEASE_NAME.to_string(),
        }
    }
}

/// Leader election settings that cannot work. Stops the run at start.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The namespace is not a namespace name.
    #[error(
        "--leader-elect-namespace {0:?} is not a namespace name (a DNS label: lowercase \
         letters, digits and '-', at most 63 characters)"
    )]
    Namespace(String),
    /// The Lease name is not an object name.
    #[error(
        "--leader-elect-lease {0:?} is not a Lease name (a DNS subdomain: lowercase \
         letters, digits, '-' and '.', at most 253 characters)"
    )]
    Lease(String),
}

/// Why a request about the Lease failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Someone else wrote (or created) the Lease first: 409 Conflict or AlreadyExists.
    #[error("another agent wrote the Lease first (409 Conflict)")]
    Conflict,
    /// The API server did not answer, or refused the request for another reason.
    #[error("{0}")]
    Failed(String),
}

/// Reads and writes the one Lease of an election.
pub trait LeaseStore {
    /// The Lease; `None` when it does not exist. `fresh`: the newest version (a quorum
    /// read); otherwise any recent one will do (the API server's watch cache, no etcd
    /// read), which is safe because every write checks the `resourceVersion` it read.
    fn get(&self, fresh: bool) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;
    /// Creates the Lease; [`StoreError::Conflict`] when it exists already.
    fn create(&self, lease: Lease) -> impl Future<Output = Result<Lease, StoreError>> + Send;
    /// Replaces the Lease if it is still at `lease.metadata.resource_version`;
    /// [`StoreError::Conflict`] when it changed since.
    fn replace(&self, lease: Lease) -> impl Future<Output = Result<Lease, StoreError>> + Send;
}

/// The Lease in the API server, through the agent's Kubernetes client.
pub struct KubeLeaseStore {
    api: Api<Lease>,
    name: String,
    /// `namespace/name`, for messages.
    shown: String,
    /// `host:port` of the API server, for messages.
    server: String,
}

impl KubeLeaseStore {
    /// The Lease `name` in `namespace`, through `client`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, server: &str) -> Self {
        KubeLeaseStore {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            shown: format!("{namespace}/{name}"),
            server: server.to_string(),
        }
    }

    fn classify(&self, error: kube::Error) -> StoreError {
        match &error {
            kube::Error::Api(status)
                if status.code == 409 || status.is_conflict() || status.is_already_exists() =>
            {
                StoreError::Conflict
            }
            kube::Error::Api(status) if status.code == 403 => StoreError::Failed(format!(
                "forbidden ({}): the agent needs get, create and update on the Lease {} \
                 (manifests/rbac.yaml, Role invariant-agent-leader-election)",
                status.message, self.shown
            )),
            _ => StoreError::Failed(
                super::error::from_client_error(&error, &self.server).to_string(),
            ),
        }
    }
}

impl LeaseStore for KubeLeaseStore {
    async fn get(&self, fresh: bool) -> Result<Option<Lease>, StoreError> {
        let params = if fresh {
            GetParams::default()
        } else {
            GetParams::any()
        };
        match self.api.get_with(&self.name, &params).await {
            Ok(lease) => Ok(Some(lease)),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(e) => Err(self.classify(e)),
        }
    }

    async fn create(&self, lease: Lease) -> Result<Lease, StoreError> {
        self.api
            .create(&PostParams::default(), &lease)
            .await
            .map_err(|e| self.classify(e))
    }

    async fn replace(&self, lease: Lease) -> Result<Lease, StoreError> {
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| self.classify(e))
    }
}

/// What one round of the election found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Round {
    /// This agent holds the Lease: it took it in this round (`acquired`; `previous` held
    /// it before, if anyone did) or renewed it.
    Leads {
        /// Whether this agent did not lead before this round.
        acquired: bool,
        /// The holder before this agent took it over.
        previous: Option<String>,
    },
    /// Another agent holds the Lease and renewed it within its duration (by this agent's
    /// clock).
    Follows {
        /// The holder's identity.
        holder: String,
    },
    /// Another agent wrote the Lease first.
    Conflict,
    /// The API server did not answer, or refused.
    Failed(String),
}

/// One agent's side of the election: what it saw of the Lease and whether it leads. Every
/// decision uses the time it is given (the wall clock only stamps `renewTime`), and its
/// I/O goes through a [`LeaseStore`].
#[derive(Debug)]
pub struct Candidate {
    identity: String,
    /// The name a created Lease gets.
    lease_name: String,
    /// The run id this agent took from the Lease at start ([`RUN_ID_ANNOTATION`]).
    run_id: Option<String>,
    /// The Lease as last read or written, and when (by our clock) it last changed.
    observed: Option<Observed>,
    /// When this agent last wrote the Lease as its holder; `Some` exactly while it leads.
    renewed_at: Option<Instant>,
}

#[derive(Debug)]
struct Observed {
    lease: Lease,
    changed_at: Instant,
}

impl Candidate {
    /// A candidate called `identity` for the Lease `lease_name`, not leading.
    pub fn new(identity: &str, lease_name: &str) -> Self {
        Candidate {
            identity: identity.to_string(),
            lease_name: lease_name.to_string(),
            run_id: None,
            observed: None,
            renewed_at: None,
        }
    }

    /// The candidate whose run id, `run_id`, came from the Lease: written again on a Lease
    /// it creates or takes that has none (someone deleted it mid-run), and checked against
    /// the Lease's on every read.
    pub fn with_run_id(mut self, run_id: &str) -> Self {
        self.run_id = Some(run_id.to_string());
        self
    }

    /// The run id this agent took from the Lease, if it did.
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    /// The run id on the Lease as last read or written.
    fn lease_run_id(&self) -> Option<&str> {
        self.observed.as_ref().and_then(|o| run_id_of(&o.lease))
    }

    /// This agent's identity (`holderIdentity` while it leads).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether this agent leads.
    pub fn leading(&self) -> bool {
        self.renewed_at.is_some()
    }

    /// How long a round starting at `now` may take: for a leader, what is left until its
    /// renew deadline (a hung request must not keep it leading past it).
    pub fn round_limit(&self, now: Instant) -> Duration {
        match self.renewed_at {
            Some(at) => (at + RENEW_DEADLINE).saturating_duration_since(now),
            None => RENEW_DEADLINE,
        }
    }

    /// Steps down when this agent leads but has not renewed for [`RENEW_DEADLINE`] by
    /// `now`; returns whether it did.
    pub fn enforce_renew_deadline(&mut self, now: Instant) -> bool {
        match self.renewed_at {
            Some(at) if now.saturating_duration_since(at) >= RENEW_DEADLINE => {
                self.renewed_at = None;
                true
            }
            _ => false,
        }
    }

    /// One round at `now`: the leader renews; everyone else reads the Lease and takes it
    /// when it is free or expired by this agent's clock.
    pub async fn round<S: LeaseStore>(&mut self, store: &S, now: Instant) -> Round {
        let was_leading = self.leading();
        // Fast path: a leader writes on top of what it last wrote. Anything but success
        // (a conflict, an error) falls back to reading the Lease, as client-go does.
        if was_leading && let Some(observed) = &self.observed {
            let renewal = self.claim(Some(&observed.lease));
            if let Ok(lease) = store.replace(renewal).await {
                self.hold(lease, now);
                return Round::Leads {
                    acquired: false,
                    previous: None,
                };
            }
        }
        // Followers read from the API server's cache (N agents polling must not mean N
        // etcd reads every 2 s); a leader deciding whether it was superseded reads the
        // newest version.
        let lease = match store.get(was_leading).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                return match store.create(self.claim(None)).await {
                    Ok(lease) => {
                        self.hold(lease, now);
                        Round::Leads {
                            acquired: !was_leading,
                            previous: None,
                        }
                    }
                    Err(StoreError::Conflict) => Round::Conflict,
                    Err(StoreError::Failed(e)) => Round::Failed(e),
                };
            }
            Err(StoreError::Conflict) => return Round::Conflict,
            Err(StoreError::Failed(e)) => return Round::Failed(e),
        };
        self.observe(&lease, now);
        let holder = holder_of(&lease).map(str::to_string);
        if let Some(holder) = &holder
            && *holder != self.identity
            && !self.expired(now)
        {
            // Someone else holds it: a leader that reads this has been superseded.
            self.renewed_at = None;
            return Round::Follows {
                holder: holder.clone(),
            };
        }
        let previous = holder.filter(|h| *h != self.identity);
        match store.replace(self.claim(Some(&lease))).await {
            Ok(lease) => {
                self.hold(lease, now);
                Round::Leads {
                    acquired: !was_leading,
                    previous,
                }
            }
            Err(StoreError::Conflict) => Round::Conflict,
            Err(StoreError::Failed(e)) => Round::Failed(e),
        }
    }

    /// Gives the Lease up (no holder, duration 1 s) so another agent takes over at its
    /// next round. Returns whether there was anything to release; this agent does not
    /// lead afterwards, whatever the outcome.
    pub async fn release<S: LeaseStore>(&mut self, store: &S) -> Result<bool, StoreError> {
        if self.renewed_at.take().is_none() {
            return Ok(false);
        }
        let Some(observed) = &self.observed else {
            return Ok(false);
        };
        let mut lease = observed.lease.clone();
        for attempt in 0..2 {
            match store.replace(released(&lease)).await {
                Ok(_) => return Ok(true),
                // Our last renewal may have landed without our seeing the answer: read
                // the Lease once, and release it if it is still ours.
                Err(StoreError::Conflict) if attempt == 0 => match store.get(true).await? {
                    Some(current) if holder_of(&current) == Some(self.identity.as_str()) => {
                        lease = current;
                    }
                    _ => return Ok(false),
                },
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict)
    }

    /// Records `lease` as read at `now`; the expiry clock restarts only when it changed.
    fn observe(&mut self, lease: &Lease, now: Instant) {
        let changed = match &self.observed {
            Some(o) => {
                o.lease.metadata.resource_version != lease.metadata.resource_version
                    || o.lease.spec != lease.spec
            }
            None => true,
        };
        if changed {
            self.observed = Some(Observed {
                lease: lease.clone(),
                changed_at: now,
            });
        }
    }

    /// Records `lease`, just written by this agent as its holder, at `now`.
    fn hold(&mut self, lease: Lease, now: Instant) {
        self.observed = Some(Observed {
            lease,
            changed_at: now,
        });
        self.renewed_at = Some(now);
    }

    /// Whether the observed Lease's holder has not renewed it for its duration.
    fn expired(&self, now: Instant) -> bool {
        self.observed.as_ref().is_none_or(|o| {
            now.saturating_duration_since(o.changed_at) >= lease_duration_of(&o.lease)
        })
    }

    /// The Lease with this agent as holder, renewed now: on top of `current` (keeping its
    /// acquire time and transitions when this agent already holds it), or a new one.
    fn claim(&self, current: Option<&Lease>) -> Lease {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(current) = current else {
            return Lease {
                metadata: new_metadata(&self.lease_name, self.run_id.as_deref()),
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
        };
        let old = current.spec.clone().unwrap_or_default();
        let ours = old.holder_identity.as_deref() == Some(self.identity.as_str());
        let transitions = old.lease_transitions.unwrap_or(0);
        Lease {
            metadata: with_run_id(current.metadata.clone(), self.run_id.as_deref()),
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                acquire_time: if ours {
                    old.acquire_time.clone().or_else(|| Some(now.clone()))
                } else {
                    Some(now.clone())
                },
                renew_time: Some(now),
                lease_transitions: Some(if ours {
                    transitions
                } else {
                    transitions.saturating_add(1)
                }),
                ..old
            }),
        }
    }
}

/// `lease` given up: no holder, a 1 s duration, as client-go releases.
fn released(lease: &Lease) -> Lease {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let old = lease.spec.clone().unwrap_or_default();
    Lease {
        metadata: lease.metadata.clone(),
        spec: Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(RELEASED_LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..old
        }),
    }
}

/// The metadata of a Lease this agent creates: its name, the app label and the run id.
fn new_metadata(name: &str, run_id: Option<&str>) -> ObjectMeta {
    with_run_id(
        ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "invariant-agent".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        run_id,
    )
}

/// `metadata` with [`RUN_ID_ANNOTATION`] set to `run_id` if it has none; an existing one
/// is kept (agents that started earlier use it).
fn with_run_id(mut metadata: ObjectMeta, run_id: Option<&str>) -> ObjectMeta {
    if let Some(run_id) = run_id {
        metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .entry(RUN_ID_ANNOTATION.to_string())
            .or_insert_with(|| run_id.to_string());
    }
    metadata
}

/// The run id on `lease`, if it carries a non-empty one.
pub fn run_id_of(lease: &Lease) -> Option<&str> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(RUN_ID_ANNOTATION)
        .map(|id| id.trim())
        .filter(|id| !id.is_empty())
}

/// The run id the agents of this deployment share when none is configured: the one on the
/// Lease ([`RUN_ID_ANNOTATION`]). An agent that finds no Lease creates it unheld (any agent
/// takes it at its next round, as a released one) carrying `proposal`; one that finds a
/// Lease without the annotation (written by an older agent) adds `proposal`. Every write
/// carries the `resourceVersion` it read, so of racing agents exactly one writes and the
/// others read its id on the next attempt.
pub async fn agree_on_run_id<S: LeaseStore>(
    store: &S,
    lease_name: &str,
    proposal: &str,
) -> Result<String, StoreError> {
    // Each conflict means someone else wrote first; the next read sees what they wrote.
    for _ in 0..3 {
        let written = match store.get(true).await? {
            Some(lease) => {
                if let Some(id) = run_id_of(&lease) {
                    return Ok(id.to_string());
                }
                let annotated = Lease {
                    metadata: with_run_id(lease.metadata.clone(), Some(proposal)),
                    ..lease
                };
                store.replace(annotated).await
            }
            None => {
                let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
                let unheld = Lease {
                    metadata: new_metadata(lease_name, Some(proposal)),
                    spec: Some(LeaseSpec {
                        holder_identity: None,
                        lease_duration_seconds: Some(RELEASED_LEASE_DURATION.as_secs() as i32),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                store.create(unheld).await
            }
        };
        match written {
            Ok(_) => return Ok(proposal.to_string()),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict)
}

/// [`agree_on_run_id`], retried every [`RETRY_PERIOD`] for up to [`RUN_ID_DEADLINE`];
/// when the API server does not answer by then, this agent uses `proposal` alone (logged:
/// its reports and cluster-scoped series then carry a run id the other agents do not).
async fn shared_run_id<S: LeaseStore>(
    store: &S,
    lease: &str,
    name: &str,
    proposal: &str,
) -> String {
    let deadline = Instant::now() + RUN_ID_DEADLINE;
    loop {
        let attempt = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            agree_on_run_id(store, name, proposal),
        )
        .await;
        let error = match attempt {
            Ok(Ok(run_id)) => {
                tracing::info!(
                    lease = %lease, run_id = %run_id,
                    "run id from the Lease: every agent of this deployment reports under it"
                );
                return run_id;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer from the API server".to_string(),
        };
        if Instant::now() + RETRY_PERIOD >= deadline {
            tracing::warn!(
                lease = %lease, error = %error, run_id = %proposal,
                "could not read the shared run id from the Lease within {}; this agent uses \
                 its own, so its report and cluster-scoped series will not join the other \
                 agents' (set --run-id on every agent to avoid this)",
                humantime::format_duration(RUN_ID_DEADLINE)
            );
            return proposal.to_string();
        }
        tokio::time::sleep(RETRY_PERIOD).await;
    }
}

/// The Lease's holder; `None` when unheld (no holder, or an empty one).
fn holder_of(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// The Lease's duration as its holder declared it; [`LEASE_DURATION`] when unset.
fn lease_duration_of(lease: &Lease) -> Duration {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .filter(|s| *s > 0)
        .map_or(LEASE_DURATION, |s| Duration::from_secs(s as u64))
}

/// This agent's identity in the Lease: the pod name (`$POD_NAME`), else the node name
/// (`$NODE_NAME`), else the host name, plus a random suffix so two agents on one host
/// (or a restarted agent and its predecessor) never share one.
pub fn identity_from_env() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .or_else(crate::report::node_name_from_env)
        .unwrap_or_else(|| "invariant-agent".to_string());
    format!("{base}_{:08x}", fastrand::u32(..))
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Why leader election could not be set up. Stops the run at start.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The flags name no valid Lease.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// No usable Kubernetes credentials.
    #[error("--leader-elect needs Kubernetes credentials: {0}")]
    Credentials(#[from] super::ClientError),
}

/// Sets up leader election for a run of `set`, when `args` ask for it and some invariant
/// is cluster-scoped (otherwise there is nothing to elect and no Lease is ever read).
/// Uses the Kubernetes clients the probes have, else connects with `kube`. `run_id` is
/// the run id configured for this run; without one, the election first settles on the
/// Lease the id every agent shares ([`agree_on_run_id`]; [`LeaderElection::run_id`]).
/// No round runs before [`LeaderElection::start`].
pub async fn for_run(
    args: &LeaderElectArgs,
    set: &crate::config::InvariantSet,
    probes: Option<&KubeContext>,
    kube: &super::KubeArgs,
    run_id: Option<&str>,
) -> Result<Option<LeaderElection>, ElectionError> {
    if !args.leader_elect {
        return Ok(None);
    }
    let cluster_scoped = set
        .invariants
        .iter()
        .filter(|i| i.scope == crate::config::spec::Scope::Cluster)
        .count();
    if cluster_scoped == 0 {
        tracing::info!(
            "--leader-elect: no invariant is cluster-scoped, so there is no leader to elect \
             (no Lease requests)"
        );
        return Ok(None);
    }
    let context = match probes {
        Some(context) => context.clone(),
        None => KubeContext::connect(kube).await?,
    };
    let (store, namespace, name) = lease_store(args, &context)?;
    let lease = format!("{namespace}/{name}");
    let mut candidate = Candidate::new(&identity_from_env(), &name);
    // A configured run id is this run's alone: it is not written on the Lease, where a
    // later deployment without one would pick it up.
    if run_id.is_none() {
        let proposal = crate::report::generated_run_id(crate::sample::Timestamp::now());
        candidate = candidate.with_run_id(&shared_run_id(&store, &lease, &name, &proposal).await);
    }
    let election = LeaderElection::with_store(candidate, store, lease);
    tracing::info!(
        lease = %election.lease(),
        identity = %election.identity(),
        cluster_scoped,
        "leader election on: cluster-scoped invariants run only in the agent holding the Lease"
    );
    Ok(Some(election))
}

/// Checks the settings and opens the Lease with the clients of `kube`; also returns its
/// namespace and name.
fn lease_store(
    args: &LeaderElectArgs,
    kube: &KubeContext,
) -> Result<(KubeLeaseStore, String, String), SettingsError> {
    let client = kube.client(ConnectionMode::Reused);
    let namespace = args
        .leader_elect_namespace
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or(client.default_namespace())
        .to_string();
    if !is_dns_label(&namespace) {
        return Err(SettingsError::Namespace(namespace));
    }
    let name = args.leader_elect_lease.trim().to_string();
    if !is_dns_subdomain(&name) {
        return Err(SettingsError::Lease(name));
    }
    let store = KubeLeaseStore::new(client, &namespace, &name, kube.server());
    Ok((store, namespace, name))
}

/// An election: once started, a task that runs a round every [`RETRY_PERIOD`] and
/// publishes whether this agent leads. Dropping it stops the task (releasing the Lease
/// if held); [`LeaderElection::stop`] also waits for that.
pub struct LeaderElection {
    leading: watch::Receiver<bool>,
    stop: CancellationToken,
    /// The election loop until [`LeaderElection::start`] spawns it.
    pending: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
    task: Option<tokio::task::JoinHandle<()>>,
    lease: String,
    identity: String,
    run_id: Option<String>,
}

impl LeaderElection {
    /// The election of `candidate` on `store`; `lease` names it in logs and reports.
    pub fn with_store<S: LeaseStore + Send + Sync + 'static>(
        candidate: Candidate,
        store: S,
        lease: String,
    ) -> Self {
        let (tx, leading) = watch::channel(false);
        let stop = CancellationToken::new();
        let identity = candidate.identity().to_string();
        let run_id = candidate.run_id().map(str::to_string);
        let pending = Box::pin(elect(candidate, store, lease.clone(), tx, stop.clone()));
        LeaderElection {
            leading,
            stop,
            pending: Some(pending),
            task: None,
            lease,
            identity,
            run_id,
        }
    }

    /// The run id every agent of the deployment shares, read from (or written on) the
    /// Lease at start; `None` when the run id was configured (see [`for_run`]).
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    /// Starts the rounds; the first runs at once, so an agent alone (or the first) leads
    /// within one request or two. Must be called inside a Tokio runtime.
    pub fn start(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.task = Some(tokio::spawn(pending));
        }
    }

    /// Whether this agent leads, kept current.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// The Lease, `namespace/name`.
    pub fn lease(&self) -> &str {
        &self.lease
    }

    /// This agent's identity in the Lease.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Stops the election, releasing the Lease if this agent holds it; gives up after
    /// `deadline` (the Lease then expires on its own after [`LEASE_DURATION`]).
    pub async fn stop(mut self, deadline: Duration) {
        self.stop.cancel();
        let Some(mut task) = self.task.take() else {
            return;
        };
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(lease = %self.lease, "releasing the Lease took too long; it expires on its own");
        }
    }
}

impl Drop for LeaderElection {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The election loop: one round every [`RETRY_PERIOD`] until `stop`, then the release.
async fn elect<S: LeaseStore>(
    mut candidate: Candidate,
    store: S,
    lease: String,
    leading: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut log = RoundLog::default();
    loop {
        let started = Instant::now();
        let was_leading = candidate.leading();
        let limit = candidate.round_limit(started);
        let round = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            round = tokio::time::timeout(limit, candidate.round(&store, started)) => {
                round.unwrap_or_else(|_| Round::Failed(format!(
                    "no answer from the API server within {}",
                    humantime::format_duration(limit)
                )))
            }
        };
        let missed_deadline = candidate.enforce_renew_deadline(Instant::now());
        log.round(&lease, &candidate, was_leading, &round, missed_deadline);
        if candidate.leading() != was_leading {
            leading.send_replace(candidate.leading());
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(started + RETRY_PERIOD) => {}
        }
    }
    if candidate.leading() {
        leading.send_replace(false);
        match tokio::time::timeout(RELEASE_DEADLINE, candidate.release(&store)).await {
            Ok(Ok(true)) => tracing::info!(
                lease = %lease,
                "released the Lease: another agent takes over the cluster-scoped invariants at its next round"
            ),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(
                lease = %lease, error = %e,
                "could not release the Lease; another agent takes over once it expires (15s)"
            ),
            Err(_) => tracing::warn!(
                lease = %lease,
                "no answer releasing the Lease; another agent takes over once it expires (15s)"
            ),
        }
    }
}

/// Logs what rounds change: leadership won or lost, a new holder, requests failing and
/// working again (once each, not every 2 s).
#[derive(Default)]
struct RoundLog {
    /// The holder last logged, so a steady follower logs it once.
    holder: Option<String>,
    /// Whether requests are failing (logged when that starts and when it ends).
    failing: bool,
    /// The last failure, for the step-down message.
    last_error: Option<String>,
    /// Whether a run id on the Lease other than this agent's was logged.
    other_run_id: bool,
}

impl RoundLog {
    fn round(
        &mut self,
        lease: &str,
        candidate: &Candidate,
        was_leading: bool,
        round: &Round,
        missed_deadline: bool,
    ) {
        let identity = candidate.identity();
        if let (Some(mine), Some(theirs)) = (candidate.run_id(), candidate.lease_run_id())
            && mine != theirs
            && !std::mem::replace(&mut self.other_run_id, true)
        {
            tracing::warn!(
                lease = %lease, run_id = %mine, lease_run_id = %theirs,
                "the Lease names another run id than this agent's (it could not read the \
                 Lease at start, or the Lease was replaced): its report and cluster-scoped \
                 series do not join the other agents'; restart it, or give every agent --run-id"
            );
        }
        match round {
            Round::Failed(error) => {
                if !self.failing {
                    tracing::warn!(
                        lease = %lease, error = %error,
                        "a request for the Lease failed; retrying every 2s"
                    );
                }
                self.failing = true;
                self.last_error = Some(error.clone());
            }
            _ => {
                if self.failing {
                    tracing::info!(lease = %lease, "requests for the Lease work again");
                }
                self.failing = false;
            }
        }
        match (round, was_leading, candidate.leading()) {
            (Round::Leads { previous, .. }, false, true) => {
                tracing::info!(
                    lease = %lease, identity = %identity,
                    previous_holder = previous.as_deref().unwrap_or("(none)"),
                    "this agent now leads: it runs the cluster-scoped invariants"
                );
                self.holder = Some(identity.to_string());
            }
            (Round::Follows { holder }, true, false) => {
                tracing::warn!(
                    lease = %lease, holder = %holder,
                    "another agent holds the Lease now: cluster-scoped invariants stop here"
                );
                self.holder = Some(holder.clone());
            }
            (_, true, false) if missed_deadline => {
                tracing::warn!(
                    lease = %lease,
                    error = self.last_error.as_deref().unwrap_or("(none)"),
                    "could not renew the Lease for 10s: stepping down, cluster-scoped invariants stop here until this or another agent leads"
                );
                self.holder = None;
            }
            (Round::Follows { holder }, _, _) if self.holder.as_ref() != Some(holder) => {
                tracing::info!(
                    lease = %lease, holder = %holder,
                    "another agent leads: it runs the cluster-scoped invariants"
                );
                self.holder = Some(holder.clone());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// An in-memory Lease with the API server's optimistic concurrency, and a switch to
    /// make every request fail (an unreachable API server).
    #[derive(Default)]
    struct FakeStore {
        lease: Mutex<Option<Lease>>,
        version: Mutex<u64>,
        down: Mutex<bool>,
        requests: Mutex<Vec<&'static str>>,
    }

    impl FakeStore {
        fn set_down(&self, down: bool) {
            *self.down.lock().unwrap() = down;
        }

        fn holder(&self) -> Option<String> {
            let lease = self.lease.lock().unwrap();
            lease.as_ref().and_then(holder_of).map(str::to_string)
        }

        fn spec(&self) -> LeaseSpec {
            let lease = self.lease.lock().unwrap();
            lease.as_ref().unwrap().spec.clone().unwrap()
        }

        fn take_requests(&self) -> Vec<&'static str> {
            std::mem::take(&mut *self.requests.lock().unwrap())
        }

        fn check(&self, verb: &'static str) -> Result<(), StoreError> {
            self.requests.lock().unwrap().push(verb);
            if *self.down.lock().unwrap() {
                return Err(StoreError::Failed("connection refused".into()));
            }
            Ok(())
        }

        fn stored(&self, mut lease: Lease) -> Lease {
            let mut version = self.version.lock().unwrap();
            *version += 1;
            lease.metadata.resource_version = Some(version.to_string());
            *self.lease.lock().unwrap() = Some(lease.clone());
            lease
        }
    }

    impl LeaseStore for FakeStore {
        async fn get(&self, fresh: bool) -> Result<Option<Lease>, StoreError> {
            self.check(if fresh { "get (fresh)" } else { "get" })?;
            Ok(self.lease.lock().unwrap().clone())
        }

        async fn create(&self, lease: Lease) -> Result<Lease, StoreError> {
            self.check("create")?;
            if self.lease.lock().unwrap().is_some() {
                return Err(StoreError::Conflict);
            }
            Ok(self.stored(lease))
        }

        async fn replace(&self, lease: Lease) -> Result<Lease, StoreError> {
            self.check("update")?;
            let current = self
                .lease
                .lock()
                .unwrap()
                .as_ref()
                .and_then(|l| l.metadata.resource_version.clone());
            if current.is_none() || current != lease.metadata.resource_version {
                return Err(StoreError::Conflict);
            }
            Ok(self.stored(lease))
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// The Lease is free: the first agent takes it with one GET and one create; the
    /// second follows; the leader renews with a single update per round.
    #[tokio::test]
    async fn the_first_agent_takes_a_missing_lease_and_renews_with_one_update() {
        let store = FakeStore::default();
        let t0 = Instant::now();
        let mut a = Candidate::new("a", "invariant-agent");
        let mut b = Candidate::new("b", "invariant-agent");
        assert_eq!(
            a.round(&store, t0).await,
            Round::Leads {
                acquired: true,
                previous: None
            }
        );
        assert_eq!(store.take_requests(), ["get", "create"]);
        let spec = store.spec();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(
            b.round(&store, t0).await,
            Round::Follows { holder: "a".into() }
        );
        assert!(a.leading() && !b.leading());

        let acquired = spec.acquire_time;
        assert_eq!(
            a.round(&store, t0 + secs(2)).await,
            Round::Leads {
                acquired: false,
                previous: None
            }
        );
        assert_eq!(
            store.take_requests(),
            ["get", "update"],
            "b's get, a's update"
        );
        assert_eq!(store.spec().acquire_time, acquired, "a renewal keeps it");
        assert_eq!(store.spec().lease_transitions, Some(0));
    }

    /// A follower takes over only after the lease duration has passed on its own clock
    /// since it last saw the Lease change; the holder's timestamps do not matter (here
    /// the holder's renewTime is far in the future, as with a clock running ahead).
    #[tokio::test]
    async fn a_follower_takes_over_only_after_the_lease_duration_by_its_own_clock() {
        let store = FakeStore::default();
        let t0 = Instant::now();
        let mut a = Candidate::new("a", "l");
        let mut b = Candidate::new("b", "l");
        a.round(&store, t0).await;
        // The holder's clock is a day ahead: a timestamp comparison would never expire it.
        {
            let mut lease = store.lease.lock().unwrap();
            let spec = lease.as_mut().unwrap().spec.as_mut().unwrap();
            spec.renew_time = Some(MicroTime(
                k8s_openapi::jiff::Timestamp::now()
                    + k8s_openapi::jiff::SignedDuration::from_hours(24),
            ));
        }
        // b first sees the Lease at t0 + 1 s; a dies right after.
        assert!(matches!(
            b.round(&store, t0 + secs(1)).await,
            Round::Follows { .. }
        ));
        for s in [3, 5, 9, 15] {
            assert_eq!(
                b.round(&store, t0 + secs(s)).await,
                Round::Follows { holder: "a".into() },
                "at t0+{s}s"
            );
        }
        assert_eq!(
            b.round(&store, t0 + secs(16)).await,
            Round::Leads {
                acquired: true,
                previous: Some("a".into())
            }
        );
        let spec = store.spec();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(1));

        // a comes back (paused, not dead): it reads b's Lease and follows.
        assert_eq!(
            a.round(&store, t0 + secs(17)).await,
            Round::Follows { holder: "b".into() }
        );
        assert!(!a.leading());
    }

    /// Every renewal restarts the follower's expiry clock.
    #[tokio::test]
    async fn renewals_keep_followers_waiting() {
        let store = FakeStore::default();
        let t0 = Instant::now();
        let mut a = Candidate::new("a", "l");
        let mut b = Candidate::new("b", "l");
        a.round(&store, t0).await;
        for s in (1..60).step_by(2) {
            a.round(&store, t0 + secs(s)).await;
            assert!(a.leading());
            assert_eq!(
                b.round(&store, t0 + secs(s + 1)).await,
                Round::Follows { holder: "a".into() }
            );
        }
    }

    /// Two agents that both find the Lease expired race; the API server's optimistic
    /// concurrency lets exactly one win, the other sees a conflict.
    #[tokio::test]
    async fn racing_takeovers_are_decided_by_the_resource_version() {
        let store = FakeStore::default();
        let t0 = Instant::now();
        let mut dead = Candidate::new("dead", "l");
        dead.round(&store, t0).await;
        let mut b = Candidate::new("b", "l");
        let mut c = Candidate::new("c", "l");
        b.round(&store, t0).await;
        c.round(&store, t0).await;
        // Both read the expired Lease before either writes.
        let lease = store.get(true).await.unwrap().unwrap();
        b.observe(&lease, t0);
        c.observe(&lease, t0);
        let later = t0 + secs(20);
        let stale = c.claim(Some(&lease));
        assert!(matches!(
            b.round(&store, later).await,
            Round::Leads { acquired: true, .. }
        ));
        assert_eq!(store.replace(stale).await, Err(StoreError::Conflict));
        // c's own round now reads b's fresh renewal and follows.
        assert_eq!(
            c.round(&store, later).await,
            Round::Follows { holder: "b".into() }
        );
        // Creating a Lease that exists is a conflict too.
        let mut d = Candidate::new("d", "l");
        assert_eq!(d.claim(None).spec.unwrap().lease_transitions, Some(0));
        assert_eq!(store.create(d.claim(None)).await, Err(StoreError::Conflict));
        assert!(matches!(
            d.round(&store, later).await,
            Round::Follows { .. }
        ));
    }

    /// A leader whose requests fail keeps leading until its renew deadline, then steps
    /// down, before a follower may take over (renew deadline < lease duration).
    #[tokio::test]
    async fn a_leader_that_cannot_renew_steps_down_at_the_deadline_before_anyone_takes_over() {
        let store = FakeStore::default();
        let t0 = Instant::now();
        let mut a = Candidate::new("a", "l");
        let mut b = Candidate::new("b", "l");
        a.round(&store, t0).await;
        b.round(&store, t0).await;
        assert_eq!(a.round_limit(t0 + secs(4)), secs(6));

        store.set_down(true);
        store.take_requests();
        for s in [2, 4, 6, 8] {
            let now = t0 + secs(s);
            assert!(matches!(a.round(&store, now).await, Round::Failed(_)));
            assert!(!a.enforce_renew_deadline(now), "at t0+{s}s");
            assert!(a.leading());
        }
        assert_eq!(
            store.take_requests(),
            ["update", "get (fresh)"].repeat(4),
            "a leader falls back to a fresh read when its renewal fails"
        );
        assert!(a.enforce_renew_deadline(t0 + secs(10)));
        assert!(!a.leading());
        assert_eq!(a.round_limit(t0 + secs(10)), RENEW_DEADLINE);

        // The API server is back at t0 + 12 s; b last saw a change at t0, so it must
        // wait until t0 + 15 s. a, still the holder on record, would simply renew.
        store.set_down(false);
        assert!(matches!(
            b.round(&store, t0 + secs(12)).await,
            Round::Follows { .. }
        ));
        assert!(matches!(
            b.round(&store, t0 + secs(15)).await,
            Round::Leads { acquired: true, .. }
        ));
    }

    /// A leader that was stepped down by its deadline but is still the holder on record
    /// takes its Lease back without waiting.
    #[tokio::test]
    async fn a_holder_that_stepped_down_renews_its_own_lease_at_once() {
        let store = FakeStore::default();
        let t0 = Instant::now();
        let mut a = Candidate::new("a", "l");
        a.round(&store, t0).await;
        store.set_down(true);
        a.round(&store, t0 + secs(2)).await;
        assert!(a.enforce_renew_deadline(t0 + secs(11)));
        store.set_down(false);
        assert_eq!(
            a.round(&store, t0 + secs(12)).await,
            Round::Leads {
                acquired: true,
                previous: None
            }
        );
        assert_eq!(
            store.spec().lease_transitions,
            Some(0),
            "no change of holder"
        );
    }

    /// Releasing leaves the Lease unheld with a 1 s duration, and the next agent takes it
    /// at its next round instead of after the lease duration.
    #[tokio::test]
    async fn a_released_lease_is_taken_at_the_next_round() {
        let store = FakeStore::default();
        let t0 = Instant::now();
        let mut a = Candidate::new("a", "l");
        let mut b = Candidate::new("b", "l");
        a.round(&store, t0).await;
        b.round(&store, t0 + secs(1)).await;
        assert_eq!(a.release(&store).await, Ok(true));
        assert!(!a.leading());
        assert_eq!(store.holder(), None);
        assert_eq!(store.spec().lease_duration_seconds, Some(1));
        assert_eq!(
            a.release(&store).await,
            Ok(false),
            "nothing left to release"
        );
        assert_eq!(
            b.round(&store, t0 + secs(2)).await,
            Round::Leads {
                acquired: true,
                previous: None
            }
        );
        assert_eq!(store.spec().lease_transitions, Some(1));
    }

    /// A release whose first write conflicts (our last renewal landed unseen) reads the
    /// Lease and releases it if it is still ours, and leaves it alone if it is not.
    #[tokio::test]
    async fn release_after_an_unseen_renewal_reads_and_retries_once() {
        let store = FakeStore::default();
        let t0 = Instant::now();
        let mut a = Candidate::new("a", "l");
        a.round(&store, t0).await;
        // A renewal whose answer was lost: the store moved on, a did not see it.
        let current = store.get(true).await.unwrap().unwrap();
        store.replace(a.claim(Some(&current))).await.unwrap();
        assert_eq!(a.release(&store).await, Ok(true));
        assert_eq!(store.holder(), None);

        let mut b = Candidate::new("b", "l");
        b.round(&store, t0 + secs(3)).await;
        let current = store.get(true).await.unwrap().unwrap();
        let mut c = Candidate::new("c", "l");
        c.observe(&current, t0);
        store.replace(c.claim(Some(&current))).await.unwrap();
        assert_eq!(
            b.release(&store).await,
            Ok(false),
            "c holds it: not b's to release"
        );
        assert_eq!(store.holder().as_deref(), Some("c"));
    }

    /// The loop: rounds every 2 s, leadership published on the watch channel, the Lease
    /// released on stop; a second agent takes over at its next round. Time is paused:
    /// tokio advances it whenever every task waits.
    #[tokio::test(start_paused = true)]
    async fn the_election_publishes_leadership_and_releases_on_stop() {
        let store = std::sync::Arc::new(FakeStore::default());
        let mut a = LeaderElection::with_store(
            Candidate::new("a", "l"),
            ArcStore(store.clone()),
            "ns/l".into(),
        );
        a.start();
        let mut leading_a = a.leading();
        leading_a.wait_for(|l| *l).await.unwrap();
        let mut b = LeaderElection::with_store(
            Candidate::new("b", "l"),
            ArcStore(store.clone()),
            "ns/l".into(),
        );
        b.start();
        let mut leading_b = b.leading();
        tokio::time::sleep(secs(30)).await;
        assert!(
            *leading_a.borrow() && !*leading_b.borrow(),
            "a renews, b waits"
        );
        let started = Instant::now();
        a.stop(RELEASE_DEADLINE).await;
        assert!(!*leading_a.borrow());
        leading_b.wait_for(|l| *l).await.unwrap();
        assert!(
            started.elapsed() <= RETRY_PERIOD,
            "b took over {:?} after the release",
            started.elapsed()
        );
        assert_eq!(store.holder().as_deref(), Some("b"));

        // An API server that stops answering: b steps down at its renew deadline.
        store.set_down(true);
        let down = Instant::now();
        leading_b.wait_for(|l| !*l).await.unwrap();
        let after = down.elapsed();
        assert!(
            after > RENEW_DEADLINE - RETRY_PERIOD && after <= RENEW_DEADLINE,
            "stepped down {after:?} after the API server went away"
        );
        b.stop(RELEASE_DEADLINE).await;
    }

    /// A store shared by several elections.
    struct ArcStore(std::sync::Arc<FakeStore>);

    impl LeaseStore for ArcStore {
        async fn get(&self, fresh: bool) -> Result<Option<Lease>, StoreError> {
            self.0.get(fresh).await
        }
        async fn create(&self, lease: Lease) -> Result<Lease, StoreError> {
            self.0.create(lease).await
        }
        async fn replace(&self, lease: Lease) -> Result<Lease, StoreError> {
            self.0.replace(lease).await
        }
    }

    fn run_id_on(store: &FakeStore) -> Option<String> {
        let lease = store.lease.lock().unwrap();
        lease.as_ref().and_then(run_id_of).map(str::to_string)
    }

    /// The first agent finds no Lease and creates it unheld with its run id; every later
    /// agent reads that id; the Lease keeps it through takeovers, renewals and releases,
    /// and an agent that recreates a deleted Lease writes it again.
    #[tokio::test]
    async fn the_run_id_is_agreed_on_the_lease_and_kept_by_every_write() {
        let store = FakeStore::default();
        assert_eq!(
            agree_on_run_id(&store, "l", "run-a").await,
            Ok("run-a".into())
        );
        assert_eq!(store.take_requests(), ["get (fresh)", "create"]);
        assert_eq!(store.holder(), None, "created unheld");
        assert_eq!(store.spec().lease_duration_seconds, Some(1));
        assert_eq!(
            agree_on_run_id(&store, "l", "run-b").await,
            Ok("run-a".into())
        );
        assert_eq!(store.take_requests(), ["get (fresh)"], "a read, no write");

        let t0 = Instant::now();
        let mut a = Candidate::new("a", "l").with_run_id("run-a");
        let mut b = Candidate::new("b", "l").with_run_id("run-b");
        assert_eq!(
            a.round(&store, t0).await,
            Round::Leads {
                acquired: true,
                previous: None
            },
            "an unheld Lease is free"
        );
        assert_eq!(store.take_requests(), ["get", "update"]);
        b.round(&store, t0).await;
        a.round(&store, t0 + secs(2)).await;
        assert_eq!(run_id_on(&store).as_deref(), Some("run-a"));
        a.release(&store).await.unwrap();
        assert_eq!(run_id_on(&store).as_deref(), Some("run-a"));
        b.round(&store, t0 + secs(3)).await;
        assert_eq!(store.holder().as_deref(), Some("b"));
        assert_eq!(
            run_id_on(&store).as_deref(),
            Some("run-a"),
            "b's own id never replaces the Lease's"
        );

        // Someone deletes the Lease mid-run: its next creator writes the run id again.
        *store.lease.lock().unwrap() = None;
        let mut c = Candidate::new("c", "l").with_run_id("run-a");
        c.round(&store, t0 + secs(4)).await;
        assert_eq!(store.holder().as_deref(), Some("c"));
        assert_eq!(run_id_on(&store).as_deref(), Some("run-a"));
    }

    /// A store where another agent writes the Lease (with `run-other`) just before this
    /// agent's first write.
    struct RacingStore {
        inner: FakeStore,
        raced: Mutex<bool>,
    }

    impl RacingStore {
        async fn race(&self) {
            if std::mem::replace(&mut *self.raced.lock().unwrap(), true) {
                return;
            }
            match self.inner.get(true).await.unwrap() {
                None => {
                    let other = Candidate::new("other", "l").with_run_id("run-other");
                    let mut lease = other.claim(None);
                    lease.spec.as_mut().unwrap().holder_identity = None;
                    self.inner.create(lease).await.unwrap();
                }
                Some(lease) => {
                    let metadata = with_run_id(lease.metadata.clone(), Some("run-other"));
                    self.inner
                        .replace(Lease { metadata, ..lease })
                        .await
                        .unwrap();
                }
            }
        }
    }

    impl LeaseStore for RacingStore {
        async fn get(&self, fresh: bool) -> Result<Option<Lease>, StoreError> {
            self.inner.get(fresh).await
        }
        async fn create(&self, lease: Lease) -> Result<Lease, StoreError> {
            self.race().await;
            self.inner.create(lease).await
        }
        async fn replace(&self, lease: Lease) -> Result<Lease, StoreError> {
            self.race().await;
            self.inner.replace(lease).await
        }
    }

    /// Agents that race to write the run id agree on the winner's; a Lease written by an
    /// older agent (no run id) gets one added, its holder untouched.
    #[tokio::test]
    async fn racing_agents_agree_on_one_run_id_and_an_old_lease_gets_one() {
        let racing = RacingStore {
            inner: FakeStore::default(),
            raced: Mutex::new(false),
        };
        assert_eq!(
            agree_on_run_id(&racing, "l", "run-mine").await,
            Ok("run-other".into())
        );
        assert_eq!(
            racing.inner.take_requests(),
            [
                "get (fresh)",
                "get (fresh)",
                "create",
                "create",
                "get (fresh)"
            ],
            "our create lost to the other agent's; the next read has its id"
        );

        let store = FakeStore::default();
        Candidate::new("old", "l")
            .round(&store, Instant::now())
            .await;
        assert_eq!(run_id_on(&store), None);
        let racing = RacingStore {
            inner: store,
            raced: Mutex::new(false),
        };
        assert_eq!(
            agree_on_run_id(&racing, "l", "run-mine").await,
            Ok("run-other".into()),
            "the other agent annotated it first"
        );
        let store = FakeStore::default();
        Candidate::new("old", "l")
            .round(&store, Instant::now())
            .await;
        assert_eq!(
            agree_on_run_id(&store, "l", "run-mine").await,
            Ok("run-mine".into())
        );
        assert_eq!(store.holder().as_deref(), Some("old"));
        assert_eq!(run_id_on(&store).as_deref(), Some("run-mine"));
    }

    #[test]
    fn identities_differ_and_names_are_checked() {
        assert_ne!(identity_from_env(), identity_from_env());
        assert!(is_dns_label("invariant-agent"));
        assert!(!is_dns_label("Invariant"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(""));
        assert!(is_dns_subdomain("invariant-agent.v1"));
        assert!(!is_dns_subdomain("a..b"));
    }
}

//! The API-server load of the default deployment, on paper and measured.
//!
//! On paper ([`Load`], the formula of benches/README.md, "Scale"): a node agent
//! (daemonset.yaml, `--scope node`) sends one request per sample of each node-scoped
//! poll aimed at the API server and holds one watch per distinct watched object set,
//! re-opened every 60 s; the cluster agents (deployment.yaml, `--scope cluster
//! --leader-elect`, two replicas) do the same for the cluster-scoped invariants in the
//! leader only, plus one Lease request every 2 s per replica. So with N nodes:
//!
//! ```text
//! requests/s = N·(P_node + W_node/60) + P_cluster + W_cluster/60 + replicas/2
//! watches    = N·W_node + W_cluster
//! ```
//!
//! Measured: real agent processes with distinct node identities (NODE_NAME, POD_NAME,
//! POD_NAMESPACE, as the downward API sets them) talk to the real kube-apiserver through a
//! proxy in this test that counts every request by agent and kind, every connection and
//! every open watch stream. The node agents run the default node-scoped invariants plus
//! one node-scoped poll and one node-scoped watch (the defaults have neither, so without
//! them the node terms would be zero and untested). With 1, 5 and 20 node agents the
//! measured rates must match the formula, grow linearly with the node agents, and keep
//! the Lease and cluster terms constant; the figures for 5,000 nodes follow from the
//! verified linear formula (an extrapolation, not 5,000 processes).
//!
//! A second test holds the default invariant file to the documented budget at 5,000
//! nodes, so an edit of manifests/invariants.yaml that would load the API server with
//! every node fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::{Method, Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use invariant_agent::config::{InvariantSet, ProbeSpec, Scope};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::kube_support::{KubeApiserver, repo_path};
use crate::support::{Workspace, spawn_agent_with_env};

/// The agents' namespace (manifests/namespace.yaml) and the Lease's.
const NAMESPACE: &str = "invariant-agent";

/// Seconds between two rounds of leader election per replica (client-go's retry period).
const LEASE_ROUND_S: f64 = 2.0;

/// Seconds a watch request lasts before the API server ends it and the agent re-opens
/// it (the agent's `timeoutSeconds`).
const WATCH_TIMEOUT_S: f64 = 60.0;

/// Replicas of the cluster agents' Deployment in manifests/deployment.yaml.
const CLUSTER_REPLICAS: usize = 2;

/// The budget for the API-server load of the default deployment at 5,000 nodes
/// (benches/README.md, "Scale"): requests per second in all...
const BUDGET_REQUESTS_PER_S: f64 = 25.0;
/// ...and long-lived watch streams in all.
const BUDGET_WATCHES: f64 = 10.0;

/// Node agents in the three steps of the simulation.
const STEPS: [usize; 3] = [1, 5, 20];

/// How long each step is measured.
const WINDOW: Duration = Duration::from_secs(12);

/// Invariants added to the node agents' defaults so the node terms are not zero: one
/// poll and one watch, node-scoped (each node agent keeps its own).
const NODE_TERMS: &str = r#"
apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: node-apiserver-livez
    description: The API server is live as this node sees it (a node-scoped poll).
    owner: test
    scope: node
    interval: 1s
    timeout: 5s
    probe:
      apiserver: {path: /livez}
    condition:
      availability: {target: 100, window: 5m}
  - name: node-view-of-nodes
    description: Nodes not Ready as this node's own watch sees them (a node-scoped watch).
    owner: test
    scope: node
    interval: 1s
    timeout: 5s
    probe:
      resource:
        apiVersion: v1
        kind: Node
        expression: '!object.status.conditions.exists(c, c.type == "Ready" && c.status == "True")'
    condition:
      threshold: {max: 0}
"#;

// ---------------------------------------------------------------------------------------
// The formula.

/// What the invariants of one scope cost the API server, per agent that runs them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Load {
    /// Requests per second of polls (one per sample of an `apiserver` probe, or of an
    /// http/metrics probe aimed at the API server).
    polls: f64,
    /// Polling invariants (each may land one sample more or less in a window).
    poll_invariants: usize,
    /// Of the polls, requests per second on a new connection (a TCP and TLS handshake
    /// each).
    new_connections: f64,
    /// Distinct watches held (one per kind, namespace and selectors among `resource`
    /// and `events` probes); each is re-opened every [`WATCH_TIMEOUT_S`].
    watches: usize,
    /// TCP connects per second to the API server that send no request (`tcp` probes of
    /// the `kubernetes` Service).
    connects: f64,
    /// Invariants that connect.
    connect_invariants: usize,
}

impl Load {
    /// The load of `set`'s invariants of `scope` in one agent that runs them.
    fn of(set: &InvariantSet, scope: Scope) -> Load {
        let mut load = Load::default();
        let mut watches = BTreeSet::new();
        for invariant in set.invariants.iter().filter(|i| i.scope == scope) {
            let per_second = 1.0 / invariant.interval.as_secs_f64();
            let aimed_at_apiserver = |url: &str| url.contains("kubernetes.default.svc");
            match &invariant.probe {
                ProbeSpec::Apiserver(spec) => {
                    load.polls += per_second;
                    load.poll_invariants += 1;
                    if spec.connection == invariant_agent::config::ConnectionMode::New {
                        load.new_connections += per_second;
                    }
                }
                ProbeSpec::Http(spec) if aimed_at_apiserver(&spec.url) => {
                    load.polls += per_second;
                    load.poll_invariants += 1;
                }
                ProbeSpec::Metrics(spec) if aimed_at_apiserver(&spec.http.url) => {
                    load.polls += per_second;
                    load.poll_invariants += 1;
                }
                ProbeSpec::Tcp(spec) if spec.address.starts_with("kubernetes.default") => {
                    load.connects += per_second;
                    load.connect_invariants += 1;
                }
                ProbeSpec::Resource(spec) => {
                    watches.insert(format!(
                        "{} {} {:?} {:?} {:?}",
                        spec.api_version,
                        spec.kind,
                        spec.namespace,
                        spec.label_selector,
                        spec.field_selector
                    ));
                }
                ProbeSpec::Events(spec) => {
                    watches.insert(format!("v1 Event {:?} None None", spec.namespace));
                }
                _ => {}
            }
        }
        load.watches = watches.len();
        load
    }

    /// Requests per second in steady state: polls and watch re-opens.
    fn requests(&self) -> f64 {
        self.polls + self.watches as f64 / WATCH_TIMEOUT_S
    }
}

/// The whole deployment's load with `nodes` node agents: (requests/s, watch streams,
/// TCP connects/s without a request).
fn deployment_load(node: &Load, cluster: &Load, nodes: f64) -> (f64, f64, f64) {
    let lease = CLUSTER_REPLICAS as f64 / LEASE_ROUND_S;
    let requests = nodes * node.requests() + cluster.requests() + lease;
    let watches = nodes * node.watches as f64 + cluster.watches as f64;
    let connects = nodes * node.connects + cluster.connects;
    (requests, watches, connects)
}

/// The default invariants, as the manifests deploy them.
fn default_set() -> InvariantSet {
    let path = repo_path("manifests/invariants.yaml");
    invariant_agent::config::load_files(&[path]).expect("manifests/invariants.yaml is valid")
}

/// The default invariant file keeps the API-server load of the default deployment
/// within the documented budget at 5,000 nodes: no request term grows with the number of
/// nodes unless it is small enough to fit, and the Lease costs one request per second
/// whatever the size.
#[test]
fn scale_default_manifests_stay_within_the_api_server_budget_at_5000_nodes() {
    let set = default_set();
    let node = Load::of(&set, Scope::Node);
    let cluster = Load::of(&set, Scope::Cluster);
    let (requests, watches, connects) = deployment_load(&node, &cluster, 5_000.0);
    println!(
        "default manifests at 5,000 nodes: {requests:.2} requests/s (budget \
         {BUDGET_REQUESTS_PER_S}), {watches} watch streams (budget {BUDGET_WATCHES}), \
         {connects:.0} TCP connects/s without a request; node agent {node:?}; cluster \
         leader {cluster:?}"
    );
    assert!(
        requests <= BUDGET_REQUESTS_PER_S,
        "the default deployment would send {requests:.1} requests/s at 5,000 nodes, over \
         the budget of {BUDGET_REQUESTS_PER_S} (node agent: {node:?}; cluster leader: \
         {cluster:?}); make the new invariant cluster-scoped or poll less often"
    );
    assert!(
        watches <= BUDGET_WATCHES,
        "the default deployment would hold {watches} watches at 5,000 nodes, over the \
         budget of {BUDGET_WATCHES}; watch from the cluster agents (scope: cluster)"
    );
}

// ---------------------------------------------------------------------------------------
// The counting proxy.

/// What a request is, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    /// A GET of one object or a non-resource path (/livez, /metrics): a poll.
    Get,
    /// A GET of a collection without `watch`: the list before a watch.
    List,
    /// A watch request (`watch=true`): opens a long-lived stream.
    Watch,
    /// API discovery (`/api`, `/apis/GROUP/VERSION`): once per watch at start.
    Discovery,
    /// Anything on the Lease (get, create, update).
    Lease,
}

fn classify(uri: &Uri) -> Kind {
    let path = uri.path();
    if path.contains("/leases") {
        return Kind::Lease;
    }
    let query = uri.query().unwrap_or("");
    if query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1")
    {
        return Kind::Watch;
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.as_slice() {
        ["api"] | ["apis"] | ["api", _] | ["apis", _] | ["apis", _, _] => {
            return Kind::Discovery;
        }
        ["api", _, rest @ ..] | ["apis", _, _, rest @ ..] => rest,
        _ => return Kind::Get,
    };
    let name = match rest {
        ["namespaces", _, _resource, name @ ..] => name.first(),
        [_resource, name @ ..] => name.first(),
        [] => None,
    };
    if name.is_some() {
        Kind::Get
    } else {
        Kind::List
    }
}

/// One request the proxy forwarded.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    agent: usize,
    kind: Kind,
    method: Method,
    target: String,
    /// The API server's answer (502: the proxy could not reach it).
    status: u16,
}

/// One connection the proxy accepted; `tls` is false when the client closed it without
/// a TLS handshake (a `tcp` probe's connect).
#[derive(Clone, Copy, Debug)]
struct Connection {
    at: Instant,
    agent: usize,
    tls: bool,
}

/// One watch event (not a bookmark) the proxy passed to an agent.
#[derive(Clone, Debug)]
struct Delivered {
    at: Instant,
    agent: usize,
    /// The watch's path, e.g. `/api/v1/nodes`.
    path: String,
}

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// An HTTPS proxy in front of the real API server that counts what each agent sends:
/// one listener per agent (so every request is attributed), the API server's own
/// serving certificate (so the agents' kubeconfigs trust it as they trust the API
/// server), every request and response passed through unchanged, watch streams
/// included.
struct CountingProxy {
    upstream: String,
    tls: TlsAcceptor,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, ProxyBody>,
    requests: Mutex<Vec<Seen>>,
    connections: Mutex<Vec<Connection>>,
    events: Mutex<Vec<Delivered>>,
    /// Watch streams open now, by agent.
    open_watches: Mutex<BTreeMap<usize, usize>>,
}

impl CountingProxy {
    fn new(kube: &KubeApiserver) -> Arc<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key) = kube.serving_cert_files();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(kube.ca_file()).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_tls)
            .https_only()
            .enable_http1()
            .build();
        Arc::new(CountingProxy {
            upstream: kube.url(),
            tls: TlsAcceptor::from(Arc::new(server)),
            client: Client::builder(TokioExecutor::new()).build(connector),
            requests: Mutex::new(Vec::new()),
            connections: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            open_watches: Mutex::new(BTreeMap::new()),
        })
    }

    /// A new listener whose traffic counts as `agent`'s.
    async fn listen(self: &Arc<Self>, agent: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let proxy = proxy.clone();
                let at = Instant::now();
                tokio::spawn(async move {
                    let tls = proxy.tls.accept(stream).await;
                    proxy.connections.lock().unwrap().push(Connection {
                        at,
                        agent,
                        tls: tls.is_ok(),
                    });
                    let Ok(stream) = tls else { return };
                    let forwarder = proxy.clone();
                    let service =
                        service_fn(move |request| forwarder.clone().forward(agent, request));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    async fn forward(
        self: Arc<Self>,
        agent: usize,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let kind = classify(request.uri());
        let target = request
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".to_string());
        let at = Instant::now();
        let method = request.method().clone();
        let (mut parts, body) = request.into_parts();
        parts.uri = format!("{}{target}", self.upstream).parse().unwrap();
        parts.headers.remove(HOST);
        let upstream = Request::from_parts(parts, body.boxed_unsync());
        let response = self.client.request(upstream).await;
        self.requests.lock().unwrap().push(Seen {
            at,
            agent,
            kind,
            method,
            target: target.clone(),
            status: response.as_ref().map_or(502, |r| r.status().as_u16()),
        });
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                let body = Full::new(Bytes::from(format!("proxy: {e}")))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                return Ok(Response::builder().status(502).body(body).unwrap());
            }
        };
        if kind != Kind::Watch {
            return Ok(response.map(|b| b.boxed_unsync()));
        }
        // The stream counts as open until its body is dropped: ended by the API server
        // (timeoutSeconds) or by the agent. Its events are JSON objects, one per line.
        let open = OpenWatch::new(self.clone(), agent);
        let path = target.split('?').next().unwrap_or("").to_string();
        let mut partial = Vec::new();
        Ok(response.map(move |b| {
            b.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    partial.extend_from_slice(data);
                    while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=end).collect();
                        if !line.starts_with(b"{\"type\":\"BOOKMARK\"") {
                            open.proxy.events.lock().unwrap().push(Delivered {
                                at: Instant::now(),
                                agent,
                                path: path.clone(),
                            });
                        }
                    }
                }
                frame
            })
            .boxed_unsync()
        }))
    }

    fn requests(&self) -> Vec<Seen> {
        self.requests.lock().unwrap().clone()
    }

    fn events(&self) -> Vec<Delivered> {
        self.events.lock().unwrap().clone()
    }

    fn connections(&self) -> Vec<Connection> {
        self.connections.lock().unwrap().clone()
    }

    fn open_watches(&self, agent: usize) -> usize {
        self.open_watches
            .lock()
            .unwrap()
            .get(&agent)
            .copied()
            .unwrap_or(0)
    }
}

/// Counts one open watch stream while it lives.
struct OpenWatch {
    proxy: Arc<CountingProxy>,
    agent: usize,
}

impl OpenWatch {
    fn new(proxy: Arc<CountingProxy>, agent: usize) -> Self {
        *proxy.open_watches.lock().unwrap().entry(agent).or_default() += 1;
        OpenWatch { proxy, agent }
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        if let Some(n) = self.proxy.open_watches.lock().unwrap().get_mut(&self.agent) {
            *n = n.saturating_sub(1);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The fleet of agents.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    /// deployment.yaml's agent: `--scope cluster --leader-elect`.
    Cluster,
    /// daemonset.yaml's agent: `--scope node`.
    Node,
}

/// Real agents, each with its own identity, workspace and proxy listener.
struct Fleet {
    kube: KubeApiserver,
    proxy: Arc<CountingProxy>,
    token: String,
    /// The invariant file every agent gets (JSON is YAML), with `TCP_TARGET` where the
    /// default file names the kubernetes Service.
    config: String,
    roles: Vec<Role>,
    /// Kept so the agents live (killed when dropped) and their reports stay readable.
    agents: Vec<(Workspace, tokio::process::Child)>,
}

/// Placeholder for each agent's own proxy address in [`Fleet::config`].
const TCP_TARGET: &str = "TCP_TARGET_ADDRESS";

impl Fleet {
    /// A real API server with the agents' namespace, ServiceAccounts and RBAC applied,
    /// and the proxy in front of it.
    async fn start(set: &serde_json::Value) -> Fleet {
        let kube = KubeApiserver::start().await;
        for file in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
            let path = repo_path(&format!("manifests/{file}"));
            kube.kubectl_admin_ok(&["apply", "-f", path.to_str().unwrap()])
                .await;
        }
        // The cluster agents' ServiceAccount: the node agents need some credentials for
        // the node-scoped poll and watch this test adds (the default node-scoped
        // invariants need none, and the DaemonSet mounts none).
        let token = kube
            .service_account_token(NAMESPACE, "invariant-agent")
            .await;
        let proxy = CountingProxy::new(&kube);
        Fleet {
            kube,
            proxy,
            token,
            config: serde_json::to_string_pretty(set).unwrap(),
            roles: Vec::new(),
            agents: Vec::new(),
        }
    }

    /// Starts one agent as the manifests run it; returns its index.
    async fn start_agent(&mut self, role: Role) -> usize {
        let index = self.roles.len();
        let addr = self.proxy.listen(index).await;
        let kubeconfig = self.kube.kubeconfig_for_token_at(
            &format!("agent-{index}"),
            &self.token,
            &format!("https://{addr}"),
        );
        let ws = Workspace::new();
        let config = ws.path("invariants.yaml");
        std::fs::write(&config, self.config.replace(TCP_TARGET, &addr.to_string())).unwrap();
        let (node, pod) = (
            format!("node-{index}"),
            match role {
                Role::Cluster => format!("invariant-agent-cluster-{index}"),
                Role::Node => format!("invariant-agent-{index}"),
            },
        );
        let mut args = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
        args.extend_from_slice(match role {
            Role::Cluster => &["--scope", "cluster", "--leader-elect"][..],
            Role::Node => &["--scope", "node"][..],
        });
        let child = spawn_agent_with_env(
            &ws,
            &config,
            &args,
            &[
                ("NODE_NAME", node.as_str()),
                ("POD_NAME", pod.as_str()),
                ("POD_NAMESPACE", NAMESPACE),
                // Quiet: nobody reads the pipes until the end.
                ("RUST_LOG", "warn"),
            ],
        );
        self.roles.push(role);
        self.agents.push((ws, child));
        index
    }

    fn with_role(&self, role: Role) -> Vec<usize> {
        (0..self.roles.len())
            .filter(|i| self.roles[*i] == role)
            .collect()
    }

    /// The cluster agents that wrote the Lease (created or updated it) since `since`.
    /// Attempts the API server refused (409: another candidate wrote first) do not count.
    fn lease_writers(&self, since: Instant) -> BTreeSet<usize> {
        self.proxy
            .requests()
            .iter()
            .filter(|s| {
                s.at >= since
                    && s.kind == Kind::Lease
                    && s.method != Method::GET
                    && (200..300).contains(&s.status)
            })
            .map(|s| s.agent)
            .collect()
    }

    /// The cluster agent that wrote the Lease since `since`, if one did; in steady state
    /// only the leader writes it.
    fn leader(&self, since: Instant) -> Option<usize> {
        let writers = self.lease_writers(since);
        if writers.len() > 1 {
            // Say when each candidate touched the Lease, so a failover (a leader that could
            // not renew in time on a loaded machine) can be told from two leaders at once.
            let timeline: Vec<String> = self
                .proxy
                .requests()
                .iter()
                .filter(|s| s.at >= since && s.kind == Kind::Lease)
                .map(|s| {
                    let at = s.at.saturating_duration_since(since).as_secs_f64();
                    format!("{at:.2}s agent {} {} {}", s.agent, s.method, s.status)
                })
                .collect();
            panic!(
                "two agents wrote the Lease: {writers:?}; Lease requests since the start of \
                 the window:\n{}",
                timeline.join("\n")
            );
        }
        writers.into_iter().next()
    }

    /// Waits until a leader writes the Lease and holds `cluster_watches` watches, and
    /// every node agent holds `node_watches`; returns the leader.
    async fn wait_settled(&self, cluster_watches: usize, node_watches: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // At start every candidate may write the Lease once more (agreeing on the
            // run id: creating it unheld or annotating it), so settled means one writer
            // for the last 5 s.
            let since = Instant::now() - Duration::from_secs(5);
            let writers = self.lease_writers(since);
            if writers.len() == 1
                && let Some(&leader) = writers.first()
                && self.proxy.open_watches(leader) == cluster_watches
                && self
                    .with_role(Role::Node)
                    .iter()
                    .all(|n| self.proxy.open_watches(*n) == node_watches)
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "the agents did not settle within 60 s: open watches {:?}",
                self.proxy.open_watches.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// What one step measured.
#[derive(Debug)]
struct Step {
    nodes: usize,
    seconds: f64,
    lease: usize,
    leader_polls: usize,
    leader_new_connections: usize,
    node_polls: usize,
    node_connects: usize,
    /// Requests other than polls and Lease requests (lists, discovery, watch re-opens).
    other: BTreeMap<(Role, Kind), usize>,
    follower_requests: usize,
    /// Most watch streams seen open at once during the window, by role.
    leader_watches: usize,
    follower_watches: usize,
    node_watches: usize,
    /// Changes the test made to a Node during the window...
    node_changes: usize,
    /// ...and the watch events about Nodes the agents received, by role.
    leader_node_events: usize,
    follower_events: usize,
    node_agent_node_events: usize,
}

/// The Node whose changes the test makes during each window.
const CHANGED_NODE: &str = "scale-node";

/// Changes of [`CHANGED_NODE`] per window.
const NODE_CHANGES: usize = 5;

/// Changes an annotation of [`CHANGED_NODE`] [`NODE_CHANGES`] times, 1.5 s apart from
/// 1 s into the window (the last well before its end); returns how many changes it made.
async fn change_node(kube: &KubeApiserver, step: usize) -> usize {
    for i in 0..NODE_CHANGES {
        tokio::time::sleep(Duration::from_millis(if i == 0 { 1_000 } else { 1_500 })).await;
        let patch = format!(
            r#"{{"metadata":{{"annotations":{{"invariant-agent-test/change":"{step}-{i}"}}}}}}"#
        );
        kube.kubectl_admin_ok(&["patch", "node", CHANGED_NODE, "--type=merge", "-p", &patch])
            .await;
    }
    NODE_CHANGES
}

/// Measures `WINDOW` of traffic while the test changes a Node; `leader` is the agent
/// leading.
async fn measure(fleet: &Fleet, leader: usize) -> Step {
    let start = Instant::now();
    let nodes = fleet.with_role(Role::Node);
    let followers: Vec<usize> = fleet
        .with_role(Role::Cluster)
        .into_iter()
        .filter(|c| *c != leader)
        .collect();
    let sampling = async {
        let (mut leader_watches, mut follower_watches, mut node_watches) = (0, 0, 0);
        while start.elapsed() < WINDOW {
            tokio::time::sleep(Duration::from_millis(500)).await;
            leader_watches = leader_watches.max(fleet.proxy.open_watches(leader));
            follower_watches =
                follower_watches.max(followers.iter().map(|f| fleet.proxy.open_watches(*f)).sum());
            node_watches =
                node_watches.max(nodes.iter().map(|n| fleet.proxy.open_watches(*n)).sum());
        }
        (leader_watches, follower_watches, node_watches)
    };
    let ((leader_watches, follower_watches, node_watches), node_changes) =
        tokio::join!(sampling, change_node(&fleet.kube, nodes.len()));
    let end = Instant::now();
    let events: Vec<Delivered> = fleet
        .proxy
        .events()
        .into_iter()
        .filter(|e| e.at >= start && e.at < end)
        .collect();
    let node_events = |agent: &dyn Fn(usize) -> bool| {
        events
            .iter()
            .filter(|e| agent(e.agent) && e.path == "/api/v1/nodes")
            .count()
    };
    let seconds = (end - start).as_secs_f64();
    let in_window = |at: Instant| at >= start && at < end;
    let requests: Vec<Seen> = fleet
        .proxy
        .requests()
        .into_iter()
        .filter(|s| in_window(s.at))
        .collect();
    let connections: Vec<Connection> = fleet
        .proxy
        .connections()
        .into_iter()
        .filter(|c| in_window(c.at))
        .collect();
    let mut other = BTreeMap::new();
    for s in requests
        .iter()
        .filter(|s| !matches!(s.kind, Kind::Get | Kind::Lease))
    {
        *other.entry((fleet.roles[s.agent], s.kind)).or_insert(0) += 1;
    }
    let role = |s: &Seen| fleet.roles[s.agent];
    Step {
        nodes: nodes.len(),
        seconds,
        lease: requests.iter().filter(|s| s.kind == Kind::Lease).count(),
        leader_polls: requests
            .iter()
            .filter(|s| s.agent == leader && s.kind == Kind::Get)
            .count(),
        leader_new_connections: connections
            .iter()
            .filter(|c| c.agent == leader && c.tls)
            .count(),
        node_polls: requests
            .iter()
            .filter(|s| role(s) == Role::Node && s.kind == Kind::Get)
            .count(),
        node_connects: connections
            .iter()
            .filter(|c| fleet.roles[c.agent] == Role::Node && !c.tls)
            .count(),
        other,
        follower_requests: requests
            .iter()
            .filter(|s| followers.contains(&s.agent) && s.kind != Kind::Lease)
            .count(),
        leader_watches,
        follower_watches,
        node_watches,
        node_changes,
        leader_node_events: node_events(&|a| a == leader),
        follower_events: events
            .iter()
            .filter(|e| followers.contains(&e.agent))
            .count(),
        node_agent_node_events: node_events(&|a| fleet.roles[a] == Role::Node),
    }
}

/// Asserts `measured` is `expected_rate × seconds` within `slack` counts.
fn assert_count(what: &str, measured: usize, expected_rate: f64, seconds: f64, slack: f64) {
    let expected = expected_rate * seconds;
    assert!(
        (measured as f64 - expected).abs() <= slack,
        "{what}: measured {measured} in {seconds:.1} s, the formula says {expected:.1} ± {slack}"
    );
}

/// Real agents as the default manifests deploy them (two cluster agents under leader
/// election, node agents with distinct node identities), counted through a proxy in
/// front of a real API server: every measured rate matches the formula within one
/// sample per invariant and agent, the node terms grow linearly with the node agents,
/// the Lease and cluster terms stay the same, the node agents never touch the Lease, the
/// follower sends nothing but its Lease reads, and every watch is re-opened when the API
/// server ends it after 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_scale_request_rate_matches_the_formula_and_grows_only_with_node_agents() {
    // The default invariants (but DNS, which asks the cluster's DNS server, not the API
    // server) plus the node terms; every `tcp` probe of the kubernetes Service goes to
    // the agent's own proxy listener instead.
    let mut set = default_set();
    let extra = invariant_agent::config::parse_str("node-terms.yaml", NODE_TERMS).unwrap();
    set.invariants
        .retain(|i| !matches!(i.probe, ProbeSpec::Dns(_)));
    set.invariants.extend(extra.invariants);
    let node = Load::of(&set, Scope::Node);
    let cluster = Load::of(&set, Scope::Cluster);
    assert!(
        node.polls > 0.0 && node.watches > 0 && node.connects > 0.0,
        "{node:?}"
    );
    assert!(cluster.polls > 0.0 && cluster.watches > 0, "{cluster:?}");

    let text = std::fs::read_to_string(repo_path("manifests/invariants.yaml")).unwrap();
    let mut file: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let extra: serde_json::Value = serde_saphyr::from_str(NODE_TERMS).unwrap();
    let mut invariants: Vec<serde_json::Value> = file["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["probe"].get("dns").is_none())
        .cloned()
        .collect();
    for invariant in &mut invariants {
        if let Some(tcp) = invariant["probe"].get_mut("tcp") {
            assert!(
                tcp["address"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("kubernetes.default")),
                "{tcp}"
            );
            tcp["address"] = TCP_TARGET.into();
        }
    }
    invariants.extend(extra["invariants"].as_array().unwrap().iter().cloned());
    file["invariants"] = invariants.into();

    let mut fleet = Fleet::start(&file).await;
    let node_object =
        format!(r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{CHANGED_NODE}"}}}}"#);
    let created = fleet
        .kube
        .kubectl_with_stdin(
            fleet.kube.admin_kubeconfig(),
            &["create", "-f", "-"],
            Some(&node_object),
        )
        .await;
    assert_eq!(created.code, Some(0), "{}", created.stderr);
    let started = Instant::now();
    for _ in 0..CLUSTER_REPLICAS {
        fleet.start_agent(Role::Cluster).await;
    }
    let mut steps = Vec::new();
    let mut leader = None;
    for k in STEPS {
        while fleet.with_role(Role::Node).len() < k {
            fleet.start_agent(Role::Node).await;
        }
        let settled = fleet.wait_settled(cluster.watches, node.watches).await;
        assert!(
            leader.is_none_or(|l| l == settled),
            "leadership moved from {leader:?} to {settled} in a steady cluster"
        );
        leader = Some(settled);
        // Past the start-up requests (discovery, lists) of the agents just started.
        tokio::time::sleep(Duration::from_secs(2)).await;
        steps.push(measure(&fleet, settled).await);
    }
    let leader = leader.unwrap();

    let lease_rate = CLUSTER_REPLICAS as f64 / LEASE_ROUND_S;
    println!(
        "nodes  seconds  Lease req/s  leader polls/s  node polls/s  per node  \
         watches (leader+nodes)  node TCP connects/s  total req/s (formula)  Node events \
         to leader + node agents per change"
    );
    for step in &steps {
        let k = step.nodes as f64;
        let s = step.seconds;
        let (formula, formula_watches, _) = deployment_load(&node, &cluster, k);
        let measured_total = (step.lease + step.leader_polls + step.node_polls) as f64 / s;
        println!(
            "{:>5}  {s:>7.1}  {:>11.2}  {:>14.2}  {:>12.2}  {:>8.2}  {:>9} ({formula_watches})  \
             {:>19.2}  {measured_total:.2} ({formula:.2} incl. watch re-opens)  {} + {}",
            step.nodes,
            step.lease as f64 / s,
            step.leader_polls as f64 / s,
            step.node_polls as f64 / s,
            step.node_polls as f64 / s / k,
            step.leader_watches + step.node_watches,
            step.node_connects as f64 / s,
            step.leader_node_events as f64 / step.node_changes as f64,
            step.node_agent_node_events as f64 / step.node_changes as f64,
        );
        let what = |term: &str| format!("{term} with {} node agents", step.nodes);
        // Each periodic invariant (and each replica's election) may land one sample more
        // or less in a window, and one more for scheduling on a busy machine.
        let lease_slack = 2.0 * CLUSTER_REPLICAS as f64;
        assert_count(
            &what("Lease requests"),
            step.lease,
            lease_rate,
            s,
            lease_slack,
        );
        assert_count(
            &what("the leader's polls"),
            step.leader_polls,
            cluster.polls,
            s,
            cluster.poll_invariants as f64 + 2.0,
        );
        assert_count(
            &what("the leader's new connections"),
            step.leader_new_connections,
            cluster.new_connections,
            s,
            cluster.poll_invariants as f64 + 2.0,
        );
        assert_count(
            &what("the node agents' polls"),
            step.node_polls,
            k * node.polls,
            s,
            k * (node.poll_invariants as f64 + 1.0),
        );
        assert_count(
            &what("the node agents' TCP connects"),
            step.node_connects,
            k * node.connects,
            s,
            k * (node.connect_invariants as f64 + 1.0),
        );
        // Every change of a watched object goes to every agent watching it: once to the
        // leader, once to each node agent (a node-scoped watch), never to the follower.
        assert_eq!(step.leader_node_events, step.node_changes, "{step:?}");
        assert_eq!(
            step.node_agent_node_events,
            step.nodes * step.node_changes,
            "{step:?}"
        );
        assert_eq!(step.follower_events, 0, "{step:?}");
        assert_eq!(step.leader_watches, cluster.watches, "{step:?}");
        assert_eq!(step.node_watches, step.nodes * node.watches, "{step:?}");
        assert_eq!(step.follower_watches, 0, "{step:?}");
        assert_eq!(
            step.follower_requests, 0,
            "a follower sends nothing but its Lease reads: {step:?}"
        );
        // In steady state nothing lists or rediscovers; a watch may be re-opened.
        for ((role, kind), n) in &step.other {
            assert!(
                *kind == Kind::Watch,
                "{n} {kind:?} requests from {role:?} agents in steady state: {step:?}"
            );
        }
    }
    // Linear in the node agents: the per-agent node rate is the same at 1, 5 and 20 (the
    // assertions above bound each step by k × the per-agent formula), and the Lease and
    // cluster terms do not move.
    let per_node: Vec<f64> = steps
        .iter()
        .map(|s| s.node_polls as f64 / s.seconds / s.nodes as f64)
        .collect();
    let last = steps.last().unwrap();
    assert!(
        (per_node[2] - node.polls).abs() <= node.polls * 0.15,
        "per node agent with 20: {per_node:?} vs {}",
        node.polls
    );
    assert_count(
        "the leader's polls with 20 node agents, as with 1",
        last.leader_polls,
        steps[0].leader_polls as f64 / steps[0].seconds,
        last.seconds,
        cluster.poll_invariants as f64 + 2.0,
    );

    // Over the whole run: the node agents never touched the Lease, and only the leader
    // ever wrote it.
    let all = fleet.proxy.requests();
    let node_lease: Vec<&Seen> = all
        .iter()
        .filter(|s| fleet.roles[s.agent] == Role::Node && s.kind == Kind::Lease)
        .collect();
    assert!(
        node_lease.is_empty(),
        "node agents asked for the Lease: {node_lease:?}"
    );
    assert_eq!(fleet.leader(started), Some(leader));

    // Watches: every one asks the API server to end it after 60 s, and is re-opened
    // then. Wait until the first ones have been (one minute after they opened).
    let watches: Vec<&Seen> = all.iter().filter(|s| s.kind == Kind::Watch).collect();
    for w in &watches {
        assert!(
            w.target
                .contains(&format!("timeoutSeconds={}", WATCH_TIMEOUT_S as u32)),
            "{w:?}"
        );
    }
    let first = watches.iter().map(|w| w.at).min().unwrap();
    let reopen_by = first + Duration::from_secs_f64(WATCH_TIMEOUT_S + 5.0);
    tokio::time::sleep(reopen_by.saturating_duration_since(Instant::now())).await;
    let all = fleet.proxy.requests();
    let path = |s: &Seen| s.target.split('?').next().unwrap_or("").to_string();
    for w in all
        .iter()
        .filter(|s| s.kind == Kind::Watch && s.at + Duration::from_secs(65) <= Instant::now())
    {
        let reopened = all.iter().any(|r| {
            r.kind == Kind::Watch
                && r.agent == w.agent
                && path(r) == path(w)
                && r.at > w.at + Duration::from_secs_f64(WATCH_TIMEOUT_S - 2.0)
                && r.at < w.at + Duration::from_secs_f64(WATCH_TIMEOUT_S + 5.0)
        });
        assert!(
            reopened,
            "a watch was not re-opened 60 s after it opened: {w:?}"
        );
    }
    println!(
        "5,000 nodes by the verified formula: {:.1} requests/s, {} watch streams, {:.0} TCP \
         connects/s (with this test's added node-scoped poll and watch)",
        deployment_load(&node, &cluster, 5_000.0).0,
        deployment_load(&node, &cluster, 5_000.0).1,
        deployment_load(&node, &cluster, 5_000.0).2,
    );
}

/// The Lease term is R/2 requests/s for R candidates, whatever they run: why the node
/// agents must not be candidates. Ten agents with `--leader-elect` (as every node of a
/// DaemonSet was before the split) read or write the Lease five times a second in all,
/// one of them writes it, and the others send nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_scale_lease_requests_grow_with_the_candidates() {
    const CANDIDATES: usize = 10;
    let file: serde_json::Value = serde_saphyr::from_str(
        r#"
apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: cluster-readyz
    description: The API server is ready (sampled by the leader only).
    owner: test
    scope: cluster
    interval: 1s
    probe:
      apiserver: {path: /readyz}
    condition:
      availability: {target: 100, window: 1m}
"#,
    )
    .unwrap();
    let mut fleet = Fleet::start(&file).await;
    for _ in 0..CANDIDATES {
        fleet.start_agent(Role::Cluster).await;
    }
    let leader = fleet.wait_settled(0, 0).await;
    // Every candidate has started its rounds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..CANDIDATES).any(|c| {
        !fleet
            .proxy
            .requests()
            .iter()
            .any(|s| s.agent == c && s.kind == Kind::Lease)
    }) {
        assert!(
            Instant::now() < deadline,
            "not every candidate asked for the Lease"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let start = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let end = Instant::now();
    let seconds = (end - start).as_secs_f64();
    let requests: Vec<Seen> = fleet
        .proxy
        .requests()
        .into_iter()
        .filter(|s| s.at >= start && s.at < end)
        .collect();
    let lease = requests.iter().filter(|s| s.kind == Kind::Lease).count();
    println!(
        "{CANDIDATES} candidates: {:.2} Lease requests/s (formula {:.2})",
        lease as f64 / seconds,
        CANDIDATES as f64 / LEASE_ROUND_S
    );
    assert_count(
        "Lease requests of 10 candidates",
        lease,
        CANDIDATES as f64 / LEASE_ROUND_S,
        seconds,
        2.0 * CANDIDATES as f64,
    );
    assert_eq!(fleet.leader(start), Some(leader));
    let others: Vec<&Seen> = requests
        .iter()
        .filter(|s| s.agent != leader && s.kind != Kind::Lease)
        .collect();
    assert!(
        others.is_empty(),
        "followers sent more than Lease reads: {others:?}"
    );
}

//! The deployment manifests in `manifests/` against a real API server: every Kubernetes
//! manifest (and the kustomize build) passes a server-side dry run with no warning, the
//! pods meet Pod Security "restricted", the agents' RBAC grants exactly what each needs
//! (the cluster agents what they read and the Lease, the node agents nothing) and
//! nothing near Secrets or writes, the default invariant file and the agent's arguments
//! in the manifests are accepted by the agent, the DaemonSet runs the node-scoped
//! invariants and the Deployment the cluster-scoped ones under leader election, and the
//! default invariants hold when the real agents run them split that way against a real
//! API server, each with its own ServiceAccount's RBAC (the node agents with none).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::kube_support::{KubeApiserver, repo_path};
use crate::support::{Workspace, agent_command, spawn_agent_with_env, wait};

/// Files in `manifests/` that are not Kubernetes objects.
const NOT_KUBERNETES_OBJECTS: [&str; 3] = [
    "kustomization.yaml",
    "invariants.yaml",
    "otel-collector-config.yaml",
];

/// The cluster agents' ServiceAccount (deployment.yaml), as `kubectl --as` names it.
const AGENT: &str = "system:serviceaccount:invariant-agent:invariant-agent";

/// The node agents' ServiceAccount (daemonset.yaml).
const NODE_AGENT: &str = "system:serviceaccount:invariant-agent:invariant-agent-node";

/// The manifests that run the agent.
const AGENT_MANIFESTS: [&str; 3] = [
    "manifests/daemonset.yaml",
    "manifests/deployment.yaml",
    "manifests/sidecar/e2e-pod.yaml",
];

/// Every Kubernetes manifest under `manifests/` (recursively), sorted.
fn kubernetes_manifests() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml")
                && !NOT_KUBERNETES_OBJECTS
                    .iter()
                    .any(|n| path.file_name().is_some_and(|f| f == *n))
            {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo_path("manifests"), &mut out);
    out.sort();
    out
}

#[test]
fn default_invariant_file_validates() {
    let path = repo_path("manifests/invariants.yaml");
    let out = agent_command(&["validate", path.to_str().unwrap()]);
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("ok: "), "{}", out.stdout);
}

/// The agent's container in `manifest` (a DaemonSet, Deployment or Pod; a container or a
/// native sidecar named invariant-agent) and the pod spec it is in.
fn agent_container(manifest: &str) -> (serde_json::Value, serde_json::Value) {
    let path = repo_path(manifest);
    let text = std::fs::read_to_string(&path).unwrap();
    let object: serde_json::Value = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    let pod = if object["kind"] == "Pod" {
        object["spec"].clone()
    } else {
        object["spec"]["template"]["spec"].clone()
    };
    let container = ["containers", "initContainers"]
        .iter()
        .filter_map(|list| pod[list].as_array())
        .flatten()
        .find(|c| c["name"] == "invariant-agent")
        .unwrap_or_else(|| panic!("{manifest} has no container named invariant-agent"))
        .clone();
    (container, pod)
}

/// The agent runs as a non-root user on a read-only root filesystem, in every manifest
/// and in the image: Pod Security "restricted" (checked by the dry run below) requires
/// non-root but not a read-only root, so that is asserted here.
#[test]
fn the_agent_runs_non_root_on_a_read_only_root_filesystem() {
    for manifest in AGENT_MANIFESTS {
        let (container, pod) = agent_container(manifest);
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true, "{manifest}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{manifest}");
        assert_eq!(
            security["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{manifest}"
        );
        let non_root = |field: &str| {
            let value = &security[field];
            if value.is_null() {
                pod["securityContext"][field].clone()
            } else {
                value.clone()
            }
        };
        assert_eq!(non_root("runAsNonRoot"), true, "{manifest}");
        assert!(
            non_root("runAsUser").as_u64().is_some_and(|uid| uid != 0),
            "{manifest}"
        );
    }
    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(
        last_stage.starts_with("gcr.io/distroless/static-debian12:nonroot"),
        "{last_stage}"
    );
    let user = last_stage
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the image sets a USER");
    assert!(
        user.split(':')
            .all(|id| id.parse::<u32>().is_ok_and(|id| id != 0)),
        "USER {user}"
    );
}

/// The agent's arguments in `manifest`.
fn agent_args(manifest: &str) -> Vec<String> {
    let (container, _) = agent_container(manifest);
    container["args"]
        .as_array()
        .unwrap_or_else(|| panic!("{manifest}: the agent has no args"))
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The agent in the DaemonSet, the Deployment and the sidecar example runs
/// `invariant-agent run` with flags the agent knows, and reads its invariant file from
/// where a volume is mounted.
#[test]
fn agent_arguments_in_manifests_are_accepted_by_the_agent() {
    let help = agent_command(&["run", "--help"]);
    assert_eq!(help.code, Some(0), "{}", help.stderr);
    for manifest in AGENT_MANIFESTS {
        let (container, _) = agent_container(manifest);
        let args = agent_args(manifest);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(args.first(), Some(&"run"), "{manifest}: {args:?}");
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            let name = flag.split('=').next().unwrap();
            assert!(
                help.stdout.contains(name),
                "{manifest} passes {name}, which `invariant-agent run --help` does not list"
            );
        }
        let config = args
            .iter()
            .position(|a| *a == "--config")
            .map(|i| args[i + 1])
            .unwrap_or_else(|| panic!("{manifest}: no --config"));
        let mounted = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["mountPath"].as_str())
            .any(|dir| Path::new(config).parent() == Some(Path::new(dir)));
        assert!(mounted, "{manifest}: nothing is mounted where {config} is");
    }
}

/// The split that keeps the API server's load flat in the number of nodes: the
/// DaemonSet runs only the node-scoped invariants, with no token and no leader election
/// (no Lease requests from the nodes); the Deployment runs only the cluster-scoped ones,
/// two replicas under leader election with the ServiceAccount that may hold the Lease;
/// the sidecar, alone in its pod, runs all of them. The default invariant file has
/// invariants of both scopes, so neither workload is idle.
#[test]
fn daemonset_runs_node_scope_and_deployment_cluster_scope_under_leader_election() {
    let value_of = |args: &[String], flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].clone())
    };
    let daemonset = agent_args("manifests/daemonset.yaml");
    assert_eq!(value_of(&daemonset, "--scope").as_deref(), Some("node"));
    assert!(
        !daemonset.iter().any(|a| a == "--leader-elect"),
        "{daemonset:?}"
    );
    let (_, pod) = agent_container("manifests/daemonset.yaml");
    assert_eq!(pod["serviceAccountName"], "invariant-agent-node");
    assert_eq!(pod["automountServiceAccountToken"], false);

    let deployment = agent_args("manifests/deployment.yaml");
    assert_eq!(value_of(&deployment, "--scope").as_deref(), Some("cluster"));
    assert!(
        deployment.iter().any(|a| a == "--leader-elect"),
        "{deployment:?}"
    );
    let (_, pod) = agent_container("manifests/deployment.yaml");
    assert_eq!(pod["serviceAccountName"], "invariant-agent");
    let text = std::fs::read_to_string(repo_path("manifests/deployment.yaml")).unwrap();
    let object: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(object["spec"]["replicas"], 2);
    let text = std::fs::read_to_string(repo_path("manifests/poddisruptionbudget.yaml")).unwrap();
    let pdb: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"], object["spec"]["selector"]["matchLabels"],
        "the PodDisruptionBudget covers the cluster agents"
    );

    let sidecar = agent_args("manifests/sidecar/e2e-pod.yaml");
    assert_eq!(
        value_of(&sidecar, "--scope"),
        None,
        "the sidecar runs every scope"
    );

    let text = std::fs::read_to_string(repo_path("manifests/invariants.yaml")).unwrap();
    let set: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    for scope in ["node", "cluster"] {
        assert!(
            set["invariants"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["scope"] == scope),
            "manifests/invariants.yaml has no {scope}-scoped invariant"
        );
    }
}

/// Nothing in the manifests touches Secrets: no Secret objects, no secret volumes or
/// references, no RBAC rule naming them.
#[test]
fn manifests_have_no_secrets() {
    for path in kubernetes_manifests() {
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split('#').next().unwrap_or("").to_lowercase();
            assert!(
                !code.contains("secret"),
                "{}:{}: mentions a secret: {line}",
                path.display(),
                n + 1
            );
        }
    }
}

#[tokio::test]
async fn kube_manifests_pass_server_side_dry_run() {
    let kube = KubeApiserver::start().await;
    // Namespaced objects can be dry-run only in a namespace that exists; the namespace's
    // Pod Security labels then also judge the pods of the DaemonSet and the sidecar example.
    let namespace = repo_path("manifests/namespace.yaml");
    kube.kubectl_admin_ok(&["apply", "-f", namespace.to_str().unwrap()])
        .await;

    let manifests = kubernetes_manifests();
    assert!(manifests.len() >= 6, "manifests found: {manifests:?}");
    for path in &manifests {
        let out = kube
            .kubectl_admin(&[
                "apply",
                "--dry-run=server",
                "-n",
                "invariant-agent",
                "-f",
                path.to_str().unwrap(),
            ])
            .await;
        assert_eq!(
            out.code,
            Some(0),
            "{} failed a server-side dry run:\n{}",
            path.display(),
            out.stderr
        );
        assert!(
            !out.stderr.contains("Warning"),
            "{} drew warnings:\n{}",
            path.display(),
            out.stderr
        );
    }

    let built = kube
        .kubectl_admin_ok(&["kustomize", repo_path("manifests").to_str().unwrap()])
        .await;
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "NetworkPolicy",
    ] {
        assert!(
            built.contains(&format!("\nkind: {kind}\n")),
            "kustomize build has no {kind}"
        );
    }
    assert!(!built.contains("kind: Secret"));
    let out = kube
        .kubectl_with_stdin(
            kube.admin_kubeconfig(),
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&built),
        )
        .await;
    assert_eq!(
        out.code,
        Some(0),
        "the kustomize build failed a server-side dry run:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains("Warning"), "{}", out.stderr);

    // The Pod Security check above is not vacuous: a DaemonSet or Deployment that
    // escalates privileges draws a warning from the same namespace.
    for manifest in ["manifests/daemonset.yaml", "manifests/deployment.yaml"] {
        let workload = std::fs::read_to_string(repo_path(manifest)).unwrap();
        let escalating = workload.replace(
            "allowPrivilegeEscalation: false",
            "allowPrivilegeEscalation: true",
        );
        assert_ne!(workload, escalating);
        let out = kube
            .kubectl_with_stdin(
                kube.admin_kubeconfig(),
                &["apply", "--dry-run=server", "-f", "-"],
                Some(&escalating),
            )
            .await;
        assert!(
            out.stderr.contains("violate PodSecurity \"restricted"),
            "{manifest}: no Pod Security warning for allowPrivilegeEscalation: true:\n{}",
            out.stderr
        );
    }
}

#[tokio::test]
async fn kube_agent_rbac_is_least_privilege() {
    let kube = KubeApiserver::start().await;
    for file in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
        let path = repo_path(&format!("manifests/{file}"));
        kube.kubectl_admin_ok(&["apply", "-f", path.to_str().unwrap()])
            .await;
    }

    // (verb, what, namespace) the agent needs; `what` is kubectl auth can-i's TYPE,
    // TYPE/NAME or URL, plus `--subresource=...` where one is meant.
    let mut allowed: Vec<(&str, &str, Option<&str>)> = Vec::new();
    for resource in [
        "nodes",
        "pods",
        "services",
        "events",
        "endpointslices.discovery.k8s.io",
        "events.events.k8s.io",
    ] {
        for verb in ["get", "list", "watch"] {
            allowed.push((verb, resource, None));
            allowed.push((verb, resource, Some("kube-system")));
        }
    }
    allowed.push(("get", "namespaces/default", None));
    for url in ["/readyz", "/livez", "/healthz", "/metrics"] {
        allowed.push(("get", url, None));
    }
    allowed.push((
        "create",
        "leases.coordination.k8s.io",
        Some("invariant-agent"),
    ));
    for verb in ["get", "update", "patch"] {
        allowed.push((
            verb,
            "leases.coordination.k8s.io/invariant-agent",
            Some("invariant-agent"),
        ));
    }

    // What it must not do.
    let mut denied: Vec<(&str, &str, Option<&str>)> = Vec::new();
    for verb in ["get", "list", "watch"] {
        denied.push((verb, "secrets", None));
        denied.push((verb, "secrets", Some("invariant-agent")));
        denied.push((verb, "secrets", Some("kube-system")));
        denied.push((verb, "configmaps", Some("kube-system")));
    }
    for verb in ["create", "update", "patch", "delete", "deletecollection"] {
        denied.push((verb, "nodes", None));
        denied.push((verb, "pods", Some("default")));
        denied.push((verb, "services", Some("default")));
        denied.push((verb, "events", Some("default")));
    }
    denied.push(("patch", "nodes --subresource=status", None));
    denied.push(("create", "pods --subresource=exec", Some("default")));
    denied.push(("create", "pods --subresource=eviction", Some("default")));
    denied.push(("list", "namespaces", None));
    denied.push(("update", "namespaces/default", None));
    denied.push(("get", "/debug/pprof/", None));
    denied.push((
        "delete",
        "leases.coordination.k8s.io/invariant-agent",
        Some("invariant-agent"),
    ));
    for verb in ["get", "update", "patch"] {
        denied.push((
            verb,
            "leases.coordination.k8s.io/other",
            Some("invariant-agent"),
        ));
        denied.push((
            verb,
            "leases.coordination.k8s.io/invariant-agent",
            Some("kube-system"),
        ));
    }
    denied.push(("create", "leases.coordination.k8s.io", Some("kube-system")));
    denied.push((
        "create",
        "serviceaccounts/invariant-agent --subresource=token",
        Some("invariant-agent"),
    ));
    denied.push(("impersonate", "users", None));

    // The node agents' ServiceAccount may do none of it: no reads of objects, no
    // /metrics, no Lease. (/readyz, /livez and /healthz stay readable, as for every
    // user: Kubernetes grants them to everyone through system:public-info-viewer.)
    let public_info = ["/readyz", "/livez", "/healthz"];
    let node_denied: Vec<(&str, &str, Option<&str>)> = allowed
        .iter()
        .chain(denied.iter())
        .filter(|(_, what, _)| !public_info.contains(what))
        .copied()
        .collect();

    let mut wrong = Vec::new();
    for (who, expect, cases) in [
        (AGENT, "yes", &allowed),
        (AGENT, "no", &denied),
        (NODE_AGENT, "no", &node_denied),
    ] {
        for (verb, resource, namespace) in cases.iter() {
            let as_agent = format!("--as={who}");
            let mut args = vec!["auth", "can-i", verb];
            args.extend(resource.split(' '));
            args.push(as_agent.as_str());
            if let Some(ns) = namespace {
                args.extend(["-n", ns]);
            }
            let out = kube.kubectl_admin(&args).await;
            let answer = out.stdout.trim();
            assert!(
                answer == "yes" || answer == "no",
                "kubectl {args:?}: {}{}",
                out.stdout,
                out.stderr
            );
            if answer != expect {
                wrong.push(format!(
                    "{who} can-i {verb} {resource}{}: {answer}, want {expect}",
                    namespace.map(|n| format!(" -n {n}")).unwrap_or_default()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the agents' RBAC is off:\n{}",
        wrong.join("\n")
    );
}

/// The default invariant file, pointed at a real API server instead of the in-cluster
/// names and run by the real agents as the manifests run them, holds: the probes' URLs,
/// bodies and series match what a real API server serves; the cluster agent
/// (deployment.yaml's flags, its ServiceAccount's token and RBAC) may read all of it and
/// hold the Lease; and the node agent (daemonset.yaml's flags) needs no credentials at
/// all. Only the DNS invariant is left out (nothing here resolves cluster names);
/// intervals are shortened to 1 s (2 s for /metrics), and the test makes API calls in
/// every scope the API call latency invariants judge.
#[tokio::test]
async fn kube_default_invariants_hold_against_a_real_api_server() {
    let kube = KubeApiserver::start().await;
    for file in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
        let path = repo_path(&format!("manifests/{file}"));
        kube.kubectl_admin_ok(&["apply", "-f", path.to_str().unwrap()])
            .await;
    }
    let ws = Workspace::new();
    let token_file = ws.path("token");
    let token = kube
        .service_account_token("invariant-agent", "invariant-agent")
        .await;
    std::fs::write(&token_file, &token).unwrap();
    // The apiserver, resource and events probes use the agent's Kubernetes client.
    let kubeconfig = kube.kubeconfig_for_token("invariant-agent", &token);

    let text = std::fs::read_to_string(repo_path("manifests/invariants.yaml")).unwrap();
    let mut set: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let in_cluster = "https://kubernetes.default.svc/";
    let mut kept = Vec::new();
    for mut invariant in set["invariants"].as_array().unwrap().clone() {
        let probe = &mut invariant["probe"];
        if probe.get("dns").is_some() {
            continue;
        }
        if let Some(tcp) = probe.get_mut("tcp") {
            assert_eq!(tcp["address"], "kubernetes.default.svc:443");
            tcp["address"] = format!("127.0.0.1:{}", kube.port).into();
        }
        for kind in ["http", "metrics"] {
            if let Some(http) = probe.get_mut(kind) {
                let url = http["url"].as_str().unwrap();
                assert!(url.starts_with(in_cluster), "{url}");
                http["url"] = url
                    .replacen(in_cluster, &format!("{}/", kube.url()), 1)
                    .into();
                http["bearerTokenFile"] = token_file.to_str().unwrap().into();
                http["tls"]["caFile"] = kube.ca_file().to_str().unwrap().into();
            }
        }
        // The /metrics scrapes are the heavy ones (the API server renders every series):
        // every 2 s, so five of them do not starve the 1 s probes of a loaded test server.
        let scrape = invariant["probe"]["apiserver"]["path"] == "/metrics";
        let period = if scrape { "2s" } else { "1s" };
        invariant["interval"] = period.into();
        invariant["timeout"] = period.into();
        kept.push(invariant);
    }
    assert_eq!(kept.len(), 15, "invariants other than DNS");
    set["invariants"] = kept.into();
    // JSON is YAML.
    let config = ws.path("invariants.yaml");
    std::fs::write(&config, serde_json::to_string_pretty(&set).unwrap()).unwrap();

    let scope_of = |name: &str| {
        set["invariants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .map(|i| i["scope"].as_str().unwrap_or("node").to_string())
            .unwrap()
    };

    let cluster_agent = spawn_agent_with_env(
        &ws,
        &config,
        &[
            "--duration",
            "10s",
            "--scope",
            "cluster",
            "--leader-elect",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ],
        &[
            ("POD_NAME", "cluster-agent"),
            ("POD_NAMESPACE", "invariant-agent"),
        ],
    );
    // The node agent gets no credentials at all, as the DaemonSet's pod has no token.
    let node_ws = Workspace::new();
    let node_agent = spawn_agent_with_env(
        &node_ws,
        &config,
        &["--duration", "10s", "--scope", "node"],
        &[
            ("NODE_NAME", "node-1"),
            ("POD_NAMESPACE", "invariant-agent"),
        ],
    );
    // The API call latency invariants judge calls made after their first scrape (the
    // baseline), which the cluster agent takes once it leads; make some in every scope
    // they cover after that, twice, leaving scrapes (every 2 s) after them.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    crate::kube_probes::api_calls_in_every_scope(&kube).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    crate::kube_probes::api_calls_in_every_scope(&kube).await;
    let mut ran = 0;
    for (what, agent, ws, scope) in [
        ("cluster agent", cluster_agent, &ws, "cluster"),
        ("node agent", node_agent, &node_ws, "node"),
    ] {
        let done = wait(agent).await;
        assert_eq!(done.code, Some(0), "{what}: {}", done.stderr);
        let report = ws.report();
        let invariants = report["invariants"].as_array().unwrap();
        assert!(
            !invariants.is_empty(),
            "{what} ran nothing:\n{}",
            done.stderr
        );
        for invariant in invariants {
            let name = invariant["name"].as_str().unwrap();
            assert_eq!(scope_of(name), scope, "{what} ran {name}");
            assert_eq!(
                invariant["verdict"], "held",
                "{what}: {name} against a real API server: {invariant:#}"
            );
            ran += 1;
        }
    }
    let total = set["invariants"].as_array().unwrap().len();
    assert_eq!(
        ran, total,
        "every invariant runs in exactly one of the two agents"
    );
}

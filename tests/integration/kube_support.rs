//! A real Kubernetes API server for tests: a throwaway etcd and kube-apiserver on free
//! loopback ports in a temporary directory, with an admin credential, a CA the tests
//! (and the agent's probes) can trust, kubeconfigs for any bearer token, ServiceAccount
//! tokens from the TokenRequest API, and faults (stop, kill and restart the API server on
//! the same port; pause etcd). There is no kubelet, scheduler or controller manager:
//! Nodes and Pods are objects a test creates and patches.
//!
//! Both binaries are built from Go modules by `scripts/build-kube-apiserver` and
//! `scripts/build-etcd` (run by `scripts/install-test-deps`) and cached by the version
//! those scripts pin; `kubectl` comes from the machine image. A missing one fails the
//! test with a message naming `scripts/install-test-deps`, in CI and elsewhere alike.

#![allow(dead_code)] // each Kubernetes test module uses a different subset

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;

use crate::export_support::{cache_dir, free_port, wait_for_port};
use crate::support::{Finished, signal};

const INSTALL_HINT: &str = "run scripts/install-test-deps";

/// How long the API server may take to report ready. Its first start on a busy 2-core
/// machine (etcd bootstrap, RBAC and priority-and-fairness bootstrap) takes 5-20 s.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// How long a stopped API server may take to exit after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// How long one kubectl invocation may take.
const KUBECTL_WITHIN: Duration = Duration::from_secs(60);

/// The service CIDR given to the API server; its first address is the `kubernetes`
/// Service's ClusterIP and is in the serving certificate.
const SERVICE_CIDR: &str = "10.0.0.0/24";
const SERVICE_IP: &str = "10.0.0.1";

/// The ServiceAccount token issuer (and default audience).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A file of the repository, by its path from the repository root.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// The version a build script pins (its `VERSION=` line), so the tests use exactly the
/// binary the script builds and a bump of the script cannot silently test an old one.
fn pinned_version(script: &str) -> String {
    let path = repo_path(&format!("scripts/{script}"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION="))
        .unwrap_or_else(|| panic!("{} has no VERSION= line", path.display()))
        .trim()
        .to_string()
}

/// A binary a build script caches under `<cache>/<name>-v<version>/<name>`.
fn built_binary(name: &str, script: &str) -> PathBuf {
    let version = pinned_version(script);
    let path = cache_dir().join(format!("{name}-v{version}")).join(name);
    assert!(
        path.is_file(),
        "{name} v{version} is not built (looked for {}); {INSTALL_HINT} (it runs scripts/{script})",
        path.display()
    );
    path
}

/// kube-apiserver built by `scripts/build-kube-apiserver`.
pub fn kube_apiserver_binary() -> PathBuf {
    built_binary("kube-apiserver", "build-kube-apiserver")
}

/// etcd built by `scripts/build-etcd`.
pub fn etcd_binary() -> PathBuf {
    built_binary("etcd", "build-etcd")
}

/// kubectl from `PATH` (the machine image's; Debian's package is too old).
pub fn kubectl_binary() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("kubectl is not on PATH; {INSTALL_HINT} (it checks for kubectl)"))
}

/// A running etcd and kube-apiserver, both killed when this is dropped.
pub struct KubeApiserver {
    /// The API server's HTTPS port on 127.0.0.1; the same across restarts.
    pub port: u16,
    /// etcd's client port on 127.0.0.1.
    pub etcd_port: u16,
    dir: tempfile::TempDir,
    etcd: std::process::Child,
    apiserver: Option<std::process::Child>,
    apiserver_binary: PathBuf,
    apiserver_args: Vec<String>,
    admin_token: String,
    admin_kubeconfig: PathBuf,
    ca_file: PathBuf,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl KubeApiserver {
    /// Starts etcd and the API server and waits until `/readyz` answers 200.
    pub async fn start() -> Self {
        Self::start_with_args(&[]).await
    }

    /// As [`Self::start`], with extra kube-apiserver flags (e.g. `--watch-cache=false`).
    pub async fn start_with_args(extra_args: &[&str]) -> Self {
        let apiserver_binary = kube_apiserver_binary();
        let etcd_binary = etcd_binary();
        kubectl_binary();

        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate();
        let ca_file = dir.path().join("ca.crt");
        let serving_cert = dir.path().join("apiserver.crt");
        let serving_key = dir.path().join("apiserver.key");
        let sa_key = dir.path().join("service-account.key");
        let sa_public_key = dir.path().join("service-account.pub");
        std::fs::write(&ca_file, &pki.ca_pem).unwrap();
        std::fs::write(&serving_cert, &pki.serving_cert_pem).unwrap();
        std::fs::write(&serving_key, &pki.serving_key_pem).unwrap();
        std::fs::write(&sa_key, &pki.service_account_key_pem).unwrap();
        std::fs::write(&sa_public_key, &pki.service_account_public_key_pem).unwrap();

        // The admin is in system:masters, which RBAC allows everything (and impersonation,
        // for `kubectl auth can-i --as`).
        let admin_token = format!("admin-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let token_file = dir.path().join("tokens.csv");
        std::fs::write(
            &token_file,
            format!("{admin_token},admin,admin-uid,\"system:masters\"\n"),
        )
        .unwrap();

        // etcd: one member, no fsync (a throwaway store; speed matters, durability not).
        let etcd_port = free_port();
        let peer_port = free_port();
        let client_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = std::process::Command::new(&etcd_binary)
            .arg("--name=default")
            .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log_file(&dir.path().join("etcd.log")))
            .stderr(log_file(&dir.path().join("etcd.log")))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", etcd_binary.display()));

        let port = free_port();
        let apiserver_args = vec![
            format!("--etcd-servers={client_url}"),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--cert-dir={}", dir.path().join("certs").display()),
            format!("--tls-cert-file={}", serving_cert.display()),
            format!("--tls-private-key-file={}", serving_key.display()),
            format!("--token-auth-file={}", token_file.display()),
            "--authorization-mode=RBAC".to_string(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", sa_public_key.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            "--allow-privileged=true".to_string(),
            // No controller manager creates the "default" ServiceAccounts this plugin
            // would insist on.
            "--disable-admission-plugins=ServiceAccount".to_string(),
            // A loopback address is not a valid Endpoints address; nothing here routes to
            // the kubernetes Service anyway.
            "--endpoint-reconciler-type=none".to_string(),
        ];
        let mut apiserver_args = apiserver_args;
        apiserver_args.extend(extra_args.iter().map(|a| a.to_string()));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new()).build(connector);

        let admin_kubeconfig = dir.path().join("admin.kubeconfig");
        let mut kube = KubeApiserver {
            port,
            etcd_port,
            dir,
            etcd,
            apiserver: None,
            apiserver_binary,
            apiserver_args,
            admin_token,
            admin_kubeconfig,
            ca_file,
            http,
        };
        std::fs::write(
            &kube.admin_kubeconfig,
            kube.kubeconfig_text("admin", &kube.admin_token),
        )
        .unwrap();

        let etcd_addr = format!("127.0.0.1:{etcd_port}").parse().unwrap();
        wait_for_port(etcd_addr, "etcd", Duration::from_secs(30)).await;
        kube.start_apiserver().await;
        kube
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// PEM file of the CA that signed the API server's certificate (valid for
    /// 127.0.0.1, localhost and the `kubernetes.default.svc` names).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The admin's bearer token (group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A kubeconfig for the admin.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The temporary directory holding the configuration, data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a kubeconfig that authenticates with `token`, as `<dir>/<name>.kubeconfig`.
    pub fn kubeconfig_for_token(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, self.kubeconfig_text(name, token)).unwrap();
        path
    }

    /// Writes a kubeconfig that authenticates with `token` to `server` (an
    /// `https://127.0.0.1:PORT` in front of this API server, such as a proxy serving
    /// [`Self::serving_cert_files`]), as `<dir>/<name>.kubeconfig`.
    pub fn kubeconfig_for_token_at(&self, name: &str, token: &str, server: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        let text = self.kubeconfig_text(name, token).replacen(
            &format!("server: {}\n", self.url()),
            &format!("server: {server}\n"),
            1,
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The API server's serving certificate and key (PEM files), valid for 127.0.0.1 and
    /// signed by [`Self::ca_file`]: a proxy in front of the API server can present them.
    pub fn serving_cert_files(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("apiserver.crt"),
            self.dir.path().join("apiserver.key"),
        )
    }

    fn kubeconfig_text(&self, user: &str, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\ncurrent-context: test\n",
            self.url(),
            self.ca_file.display(),
        )
    }

    /// Creates a namespace (if missing) and a ServiceAccount in it.
    pub async fn create_service_account(&self, namespace: &str, name: &str) {
        let ns = self
            .kubectl_admin(&["create", "namespace", namespace])
            .await;
        assert!(
            ns.code == Some(0) || ns.stderr.contains("AlreadyExists"),
            "kubectl create namespace {namespace}: {}",
            ns.stderr
        );
        self.kubectl_admin_ok(&["create", "serviceaccount", name, "-n", namespace])
            .await;
    }

    /// A token for an existing ServiceAccount from the TokenRequest API
    /// (`kubectl create token`), valid for an hour.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let token = self
            .kubectl_admin_ok(&["create", "token", name, "-n", namespace, "--duration=1h"])
            .await;
        token.trim().to_string()
    }

    /// Runs kubectl with `kubeconfig` (and a private cache directory) and returns its
    /// output, whatever its exit code.
    pub async fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Finished {
        self.kubectl_with_stdin(kubeconfig, args, None).await
    }

    /// As [`Self::kubectl`], feeding `stdin` (for `-f -`).
    pub async fn kubectl_with_stdin(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Finished {
        let mut command = tokio::process::Command::new(kubectl_binary());
        command
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.path().join("kubectl-cache").display()
            ))
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start kubectl");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).await.unwrap();
            drop(pipe);
        }
        let out = tokio::time::timeout(KUBECTL_WITHIN, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish within {KUBECTL_WITHIN:?}"))
            .expect("wait for kubectl");
        Finished {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs kubectl as the admin.
    pub async fn kubectl_admin(&self, args: &[&str]) -> Finished {
        self.kubectl(&self.admin_kubeconfig, args).await
    }

    /// Runs kubectl as the admin, fails the test unless it succeeds, and returns stdout.
    pub async fn kubectl_admin_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl_admin(args).await;
        assert_eq!(
            out.code,
            Some(0),
            "kubectl {args:?} failed\nstdout:\n{}\nstderr:\n{}",
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// GETs `path` (with a query, if any) from the API server, with `token` as bearer
    /// token when given. Returns the status and body; `None` when no response came
    /// within `within` (connection refused, reset, or a hung request).
    pub async fn get(
        &self,
        path: &str,
        token: Option<&str>,
        within: Duration,
    ) -> Option<(u16, String)> {
        let mut request = hyper::Request::get(format!("{}{path}", self.url()));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Empty::new()).unwrap();
        let response = tokio::time::timeout(within, async {
            let response = self.http.request(request).await.ok()?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((status, String::from_utf8_lossy(&body).into_owned()))
        });
        response.await.ok().flatten()
    }

    /// Whether the API server process is running.
    pub fn apiserver_running(&mut self) -> bool {
        match &mut self.apiserver {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Starts the API server (again) on the same port, with the same flags and data, and
    /// waits until `/readyz` answers 200.
    pub async fn start_apiserver(&mut self) {
        assert!(
            self.apiserver.is_none(),
            "kube-apiserver is already running"
        );
        let log = self.dir.path().join("kube-apiserver.log");
        let child = std::process::Command::new(&self.apiserver_binary)
            .args(&self.apiserver_args)
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.apiserver_binary.display()));
        self.apiserver = Some(child);
        self.wait_ready().await;
    }

    /// Stops the API server gracefully (SIGTERM, as a supervisor would) and waits until
    /// it has exited; it is killed if it takes longer than 30 s. etcd keeps running.
    pub async fn stop_apiserver(&mut self) {
        let mut child = self
            .apiserver
            .take()
            .expect("kube-apiserver is not running");
        signal(child.id(), "TERM");
        let deadline = Instant::now() + STOP_WITHIN;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "kube-apiserver did not exit within {STOP_WITHIN:?} of SIGTERM\n{}",
                    self.apiserver_log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the API server at once (SIGKILL: a crash). etcd keeps running.
    pub fn kill_apiserver(&mut self) {
        let mut child = self
            .apiserver
            .take()
            .expect("kube-apiserver is not running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the API server gracefully and starts it again on the same port.
    pub async fn restart_apiserver(&mut self) {
        self.stop_apiserver().await;
        self.start_apiserver().await;
    }

    /// Freezes etcd (SIGSTOP): its port stays open but nothing answers, as with a hung
    /// or partitioned storage. [`Self::resume_etcd`] undoes it.
    pub fn pause_etcd(&self) {
        signal(self.etcd.id(), "STOP");
    }

    /// Lets a paused etcd run again (SIGCONT).
    pub fn resume_etcd(&self) {
        signal(self.etcd.id(), "CONT");
    }

    /// The last lines of the API server's log, for failure messages.
    pub fn apiserver_log_tail(&self) -> String {
        log_tail(&self.dir.path().join("kube-apiserver.log"), 40)
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let token = self.admin_token.clone();
            if let Some((200, _)) = self
                .get("/readyz", Some(&token), Duration::from_secs(2))
                .await
            {
                return;
            }
            if !self.apiserver_running() {
                panic!(
                    "kube-apiserver exited before it was ready\n{}",
                    self.apiserver_log_tail()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "kube-apiserver was not ready within {READY_WITHIN:?}\n{}",
                    self.apiserver_log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for KubeApiserver {
    fn drop(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}

/// Certificates and keys for one throwaway cluster, PEM-encoded.
struct Pki {
    ca_pem: String,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    serving_cert_pem: String,
    serving_key_pem: String,
    /// ECDSA P-256 (PKCS#8) key that signs ServiceAccount tokens (ES256).
    service_account_key_pem: String,
    /// Its public key, which verifies them (the API server reads no public key from a
    /// PKCS#8 private key file).
    service_account_public_key_pem: String,
}

impl Pki {
    fn generate() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };

        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "invariant-agent test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate().unwrap();
        let mut serving_params = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            SERVICE_IP.to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ])
        .unwrap();
        serving_params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving_params.signed_by(&serving_key, &issuer).unwrap();

        let service_account_key = KeyPair::generate().unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            serving_cert_pem: serving_cert.pem(),
            serving_key_pem: serving_key.serialize_pem(),
            service_account_key_pem: service_account_key.serialize_pem(),
            service_account_public_key_pem: service_account_key.public_key_pem(),
        }
    }
}

/// Opens (appending) a log file for a child's stdout or stderr.
fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "--- last {} lines of {} ---\n{}",
        all.len() - start,
        path.display(),
        all[start..].join("\n")
    )
}

// ---------------------------------------------------------------------------------------
// The harness itself, against the real API server.

/// Credentials work as the harness promises: the admin token is allowed everything,
/// a ServiceAccount token from TokenRequest authenticates as that ServiceAccount (and
/// RBAC denies it what it was not granted), an unknown token is refused, and a kubeconfig
/// for a token drives kubectl.
#[tokio::test]
async fn kube_harness_credentials_and_kubeconfigs() {
    let kube = KubeApiserver::start().await;

    let version = kube
        .get("/version", Some(kube.admin_token()), Duration::from_secs(5))
        .await
        .expect("GET /version");
    assert_eq!(version.0, 200, "{}", version.1);
    let expected = format!(
        "\"gitVersion\": \"v{}\"",
        pinned_version("build-kube-apiserver")
    );
    assert!(version.1.contains(&expected), "{}", version.1);

    kube.create_service_account("probe-ns", "prober").await;
    let token = kube.service_account_token("probe-ns", "prober").await;
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
    let sa_kubeconfig = kube.kubeconfig_for_token("prober", &token);

    let whoami = kube
        .kubectl(
            &sa_kubeconfig,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
        )
        .await;
    assert_eq!(whoami.code, Some(0), "{}", whoami.stderr);
    assert_eq!(whoami.stdout, "system:serviceaccount:probe-ns:prober");

    // Authenticated, but RBAC grants it nothing beyond discovery and health.
    let pods = kube
        .kubectl(&sa_kubeconfig, &["get", "pods", "-n", "probe-ns"])
        .await;
    assert_ne!(pods.code, Some(0));
    assert!(pods.stderr.contains("Forbidden"), "{}", pods.stderr);
    let (status, body) = kube
        .get("/readyz", Some(&token), Duration::from_secs(5))
        .await
        .expect("GET /readyz");
    assert_eq!((status, body.as_str()), (200, "ok"));

    // An unknown token is not a user.
    let bogus = kube.kubeconfig_for_token("bogus", "not-a-token");
    let denied = kube.kubectl(&bogus, &["get", "namespaces"]).await;
    assert_ne!(denied.code, Some(0));
    assert!(denied.stderr.contains("Unauthorized"), "{}", denied.stderr);

    // The admin may do anything.
    let nodes = kube.kubectl_admin_ok(&["get", "nodes", "-o", "name"]).await;
    assert_eq!(nodes, "", "a fresh cluster has no nodes");
}

/// Faults the harness offers for later tests: a graceful stop refuses connections on the
/// port, a restart serves again on the same port with the same data, a kill is a crash,
/// and a paused etcd fails quorum reads while the watch cache still answers reads at
/// resourceVersion=0 (the distinction manifests/invariants.yaml relies on).
#[tokio::test]
async fn kube_harness_stop_restart_and_etcd_pause() {
    let mut kube = KubeApiserver::start().await;
    let admin = kube.admin_token().to_string();
    let port = kube.port;
    kube.kubectl_admin_ok(&["create", "namespace", "survives-restart"])
        .await;

    kube.stop_apiserver().await;
    assert!(!kube.apiserver_running());
    assert!(
        kube.get("/readyz", Some(&admin), Duration::from_secs(2))
            .await
            .is_none(),
        "a stopped API server still answered"
    );

    kube.start_apiserver().await;
    assert_eq!(kube.port, port);
    kube.kubectl_admin_ok(&["get", "namespace", "survives-restart"])
        .await;

    kube.kill_apiserver();
    assert!(
        kube.get("/livez", Some(&admin), Duration::from_secs(2))
            .await
            .is_none()
    );
    kube.start_apiserver().await;

    let quorum = "/api/v1/namespaces/default";
    let cached = "/api/v1/namespaces/default?resourceVersion=0";
    for path in [quorum, cached] {
        let (status, _) = kube
            .get(path, Some(&admin), Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("GET {path}: no answer"));
        assert_eq!(status, 200, "GET {path}");
    }
    kube.pause_etcd();
    let during_pause_cached = kube.get(cached, Some(&admin), Duration::from_secs(3)).await;
    let during_pause_quorum = kube.get(quorum, Some(&admin), Duration::from_secs(3)).await;
    kube.resume_etcd();
    assert!(
        matches!(&during_pause_cached, Some((200, body)) if body.contains("\"kind\":\"Namespace\"")),
        "a resourceVersion=0 read while etcd was paused: {during_pause_cached:?}"
    );
    assert!(
        !matches!(during_pause_quorum, Some((200, _))),
        "a quorum read succeeded while etcd was paused: {during_pause_quorum:?}"
    );
    let (status, _) = kube
        .get(quorum, Some(&admin), Duration::from_secs(30))
        .await
        .expect("quorum read after etcd resumed");
    assert_eq!(status, 200);
}

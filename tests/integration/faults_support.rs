//! Fault injectors for the faults_* tests: a raw-TCP HTTP target whose misbehaviour the
//! test switches while the agent runs (reset, hang after accept, slow body, malformed or
//! huge replies), and a small filesystem fault (a tmpfs that can be filled).
//!
//! The target speaks just enough HTTP/1.1 by hand so that it can misbehave in ways a real
//! HTTP server library never would (RST in the middle of a request, a body that never
//! ends); everything it does is on a real loopback socket.

#![allow(dead_code)] // each faults module uses a different subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::now_ms;

/// How a [`FaultyTarget`] answers the next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// `200 OK` with body `ok`, keep-alive.
    Ok,
    /// Reads the request, then resets the connection (SO_LINGER 0, close: a TCP RST).
    Reset,
    /// Reads the request and never answers (holds the connection until the peer closes).
    Hang,
    /// Sends the head at once, then a 64-byte body one byte every 200 ms (12.8 s).
    SlowBody,
    /// Answers with a head that is not HTTP (`Content-Length: lots`).
    Malformed,
    /// Answers 200 with a 1 MiB body.
    Huge,
}

/// A loopback HTTP target whose [`Behaviour`] the test changes while the agent runs.
pub struct FaultyTarget {
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl FaultyTarget {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let behaviour = Arc::new(Mutex::new(Behaviour::Ok));
        let shared = behaviour.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        FaultyTarget { addr, behaviour }
    }

    /// Switches the behaviour for every request read from now on; returns the wall time.
    pub fn set(&self, behaviour: Behaviour) -> i64 {
        *self.behaviour.lock().unwrap() = behaviour;
        now_ms()
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// Reads one request head; `false` when the peer closed or the head is unreadable.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&byte[..n]),
        }
        if head.len() > 64 * 1024 {
            return false;
        }
    }
    true
}

async fn serve(mut stream: TcpStream, behaviour: Arc<Mutex<Behaviour>>) {
    while read_head(&mut stream).await {
        let now = *behaviour.lock().unwrap();
        match now {
            Behaviour::Ok => {
                let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if stream.write_all(reply).await.is_err() {
                    return;
                }
            }
            Behaviour::Reset => {
                let _ = stream.set_zero_linger();
                return; // dropped with SO_LINGER 0: the kernel sends RST
            }
            Behaviour::Hang => {
                // Never answer; return once the peer gives up and closes.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            Behaviour::SlowBody => {
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n";
                if stream.write_all(head).await.is_err() {
                    return;
                }
                for _ in 0..64 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if stream.write_all(b"x").await.is_err() {
                        return;
                    }
                }
            }
            Behaviour::Malformed => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\nok")
                    .await;
                return;
            }
            Behaviour::Huge => {
                let body = vec![b'x'; 1 << 20];
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                if stream.write_all(head.as_bytes()).await.is_err()
                    || stream.write_all(&body).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// A small tmpfs mounted for one test, unmounted on drop: a filesystem that really fills
/// up (ENOSPC). `None` when this user may not mount (then the caller says why it falls
/// back to something else).
pub struct SmallTmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallTmpfs {
    pub fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallTmpfs { path, _dir: dir })
    }

    /// Fills the filesystem with one file (`filler`) until the kernel says ENOSPC.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match file.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling {}: {e}", filler.display()),
            }
        }
        let _ = file.sync_all();
        filler
    }

    pub fn dir(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

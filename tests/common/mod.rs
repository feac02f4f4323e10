//! Shared helpers of the integration tests: the real `petal` binary, real servers on loopback,
//! the project venv's Python as a test oracle.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn petal_bin() -> &'static str {
    env!("CARGO_BIN_EXE_petal")
}

/// A `petal` command with a clean environment: no inherited PETAL__* or PETAL_CONFIG.
pub fn petal() -> Command {
    let mut cmd = Command::new(petal_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PETAL__") || key == "PETAL_CONFIG" || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The venv's Python (set by scripts/env.sh), the test oracle.
pub fn python() -> PathBuf {
    let p = std::env::var_os("PETAL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(p.exists(), "no Python oracle at {}: run the tests with `make test`", p.display());
    p
}

/// Runs a Python oracle script from tests/oracles with arguments; panics with its stderr on failure.
pub fn oracle(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles").join(script);
    let out = Command::new(python()).arg(path).args(args).output().expect("run python");
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A `petal serve` process on a free loopback port with its own registry folder.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(|_| {})
    }

    /// Starts the server after `customize` has adjusted the command (env, flags).
    pub fn start_with(customize: impl FnOnce(&mut Command)) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = petal();
        cmd.args(["--log-format", "json", "serve", "--port", "0", "--workers", "2"])
            .env("PETAL__REGISTRY__PATH", dir.path().join("registry"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        customize(&mut cmd);
        let mut child = cmd.spawn().expect("spawn petal serve");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(addr) = v.get("addr").and_then(|a| a.as_str()) {
                        let _ = tx.send(addr.to_string());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("server did not log its address:\n{}", logs.lock().unwrap().join("\n"))
        });
        Server { child, base: format!("http://{addr}"), logs, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Waits until `/readyz` answers `want` (200 or 503 once checks ran).
    pub fn wait_ready(&self, want: u16) -> serde_json::Value {
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send() {
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().expect("readyz json");
                let started = body["checks"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["name"] == "startup" && c["ok"] == true));
                if started && status == want {
                    return body;
                }
                assert!(Instant::now() < deadline, "readyz never answered {want}: {status} {body}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Sends a signal and waits for the process to exit; returns its exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill").success();
        assert!(ok, "kill -{signal} failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit after {signal}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

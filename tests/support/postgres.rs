//! A throwaway PostgreSQL cluster for one test: `initdb` in a temporary directory, a
//! server on a free loopback port, stopped and removed on drop. The server refuses to
//! run as root, so as root it runs as the `postgres` user (Debian's package makes one).
//!
//! Without PostgreSQL's programs the tests that need it skip, saying why, unless
//! `IDEMPOTENT_RETRY_REQUIRE_POSTGRES` is set (as `.ci/run` does): then they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub url: String,
    /// With `start_tls`: the PEM certificate of the authority that signed the server's
    /// certificate (for 127.0.0.1), to trust.
    pub certificate: Option<Vec<u8>>,
    /// The server's options, to start it again with them.
    options: String,
}

/// The directory with `initdb` and `pg_ctl`: `pg_config --bindir`, or the newest
/// `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs a PostgreSQL program, as the `postgres` user when we are root.
fn run(bin: &Path, program: &str, args: &[&str]) -> std::process::Output {
    let program = bin.join(program);
    let output = if is_root() {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&program)
            .args(args)
            .output()
    } else {
        Command::new(&program).args(args).output()
    };
    output.unwrap_or_else(|e| panic!("{}: {e}", program.display()))
}

impl Cluster {
    /// A new cluster, or `None` (with the reason printed) where PostgreSQL is missing
    /// and not required.
    pub fn start(name: &str) -> Option<Cluster> {
        Self::start_with(name, false)
    }

    /// As [`start`](Self::start), the server offering TLS with a certificate for
    /// 127.0.0.1 signed by a throwaway authority (made with `openssl`).
    pub fn start_tls(name: &str) -> Option<Cluster> {
        Self::start_with(name, true)
    }

    fn start_with(name: &str, tls: bool) -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            let reason = "PostgreSQL's initdb was not found (pg_config, /usr/lib/postgresql)";
            if std::env::var_os("IDEMPOTENT_RETRY_REQUIRE_POSTGRES").is_some() {
                panic!("{reason}, and IDEMPOTENT_RETRY_REQUIRE_POSTGRES is set");
            }
            eprintln!("skipping the PostgreSQL test {name}: {reason}");
            return None;
        };
        let dir =
            std::env::temp_dir().join(format!("idempotent-retry-pg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown {}", dir.display());
        }
        let certificate = tls.then(|| {
            // A certificate authority, and the server's certificate signed by it.
            let file = |name: &str| dir.join(name);
            let openssl = |args: &[&str]| {
                let out = Command::new("openssl").args(args).output().unwrap();
                assert!(
                    out.status.success(),
                    "openssl: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let path = |name: &str| file(name).to_str().unwrap().to_owned();
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=journal test CA",
                "-keyout",
                &path("ca.key"),
                "-out",
                &path("ca.pem"),
            ]);
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &path("key.pem"),
                "-out",
                &path("server.csr"),
            ]);
            std::fs::write(
                file("ext.cnf"),
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
            )
            .unwrap();
            openssl(&[
                "x509",
                "-req",
                "-in",
                &path("server.csr"),
                "-CA",
                &path("ca.pem"),
                "-CAkey",
                &path("ca.key"),
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &path("ext.cnf"),
                "-out",
                &path("cert.pem"),
            ]);
            if is_root() {
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(file("key.pem"))
                    .arg(file("cert.pem"))
                    .status()
                    .unwrap();
            }
            Command::new("chmod")
                .arg("600")
                .arg(file("key.pem"))
                .status()
                .unwrap();
            std::fs::read(file("ca.pem")).unwrap()
        });
        let data = dir.join("data");
        let data_arg = data.to_str().unwrap();
        let out = run(
            &bin,
            "initdb",
            &[
                "-D",
                data_arg,
                "-U",
                "journal",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=on -c max_connections=50",
            dir.display()
        );
        if tls {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={0}/cert.pem -c ssl_key_file={0}/key.pem",
                dir.display()
            ));
        }
        let log = dir.join("server.log");
        let out = run(
            &bin,
            "pg_ctl",
            &[
                "-D",
                data_arg,
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Some(Cluster {
            url: format!("postgres://journal@127.0.0.1:{port}/postgres"),
            bin,
            dir,
            certificate,
            options,
        })
    }
}

impl Cluster {
    /// Stops the server at once, as if it crashed, and starts it again on the same
    /// port (it recovers from its log). Blocks until it accepts connections.
    pub fn restart(&self) {
        let data = self.dir.join("data");
        let data = data.to_str().unwrap();
        let log = self.dir.join("server.log");
        let stop = run(
            &self.bin,
            "pg_ctl",
            &["-D", data, "-m", "immediate", "stop"],
        );
        assert!(stop.status.success(), "pg_ctl stop: {stop:?}");
        // Started as at first, with its log file (or the server would hold this call's
        // output pipes open).
        let start = run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data,
                "-o",
                &self.options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(start.status.success(), "pg_ctl start: {start:?}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

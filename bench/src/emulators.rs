//! The pinned emulators (npm, emulators/package-lock.json), started on free
//! 127.0.0.1 ports. They exit by themselves when this process does
//! (emulators/loopback.js).

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository's emulators/ folder.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../emulators")
}

/// Runs `npm ci` when an emulator is missing.
pub fn install() {
    let d = dir();
    let have = [
        "kinesalite/cli.js",
        "dynalite/cli.js",
        "kinesis-local/main.js",
    ]
    .iter()
    .all(|p| d.join("node_modules").join(p).exists());
    if !have {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&d)
            .status()
            .expect("npm must be installed");
        assert!(status.success(), "npm ci failed");
    }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on `port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running emulator; killed when dropped.
pub struct Emulator {
    pub url: String,
    pub port: u16,
    child: Child,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(script: &str, args: &[&str]) -> Emulator {
    install();
    let d = dir();
    let port = free_port();
    let port_text = port.to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--port", &port_text]);
    let child = Command::new("node")
        .arg("-r")
        .arg(d.join("loopback.js"))
        .arg(d.join("node_modules").join(script))
        .args(&all)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start node");
    wait_for_port(port);
    Emulator {
        url: format!("http://127.0.0.1:{port}"),
        port,
        child,
    }
}

/// dynalite (DynamoDB).
pub fn dynalite() -> Emulator {
    node(
        "dynalite/cli.js",
        &[
            "--host",
            "127.0.0.1",
            "--createTableMs",
            "0",
            "--deleteTableMs",
            "0",
            "--updateTableMs",
            "0",
        ],
    )
}

/// kinesalite (Kinesis).
pub fn kinesalite() -> Emulator {
    node(
        "kinesalite/cli.js",
        &[
            "--createStreamMs",
            "0",
            "--deleteStreamMs",
            "0",
            "--updateStreamMs",
            "0",
            "--shardLimit",
            "1000",
        ],
    )
}

/// kinesis-local (Kinesis, with enhanced fan-out: SubscribeToShard over
/// h2c on its plain port). Configured by environment, not flags; stream
/// state changes shortened to 50 ms as in the tests.
pub fn kinesis_local() -> Emulator {
    install();
    let d = dir();
    let pkg = d.join("node_modules/kinesis-local");
    let (port, tls_port) = (free_port(), free_port());
    let mut cmd = Command::new("node");
    cmd.arg("-r")
        .arg(d.join("loopback.js"))
        .arg(pkg.join("main.js"))
        .current_dir(&pkg)
        .env("KINESIS_MOCK_CERT_PATH", pkg.join("server.json"))
        .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
        .env("KINESIS_MOCK_TLS_PORT", tls_port.to_string())
        .env("LOG_LEVEL", "WARN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for var in [
        "CREATE_STREAM_DURATION",
        "DELETE_STREAM_DURATION",
        "REGISTER_STREAM_CONSUMER_DURATION",
    ] {
        cmd.env(var, "50ms");
    }
    let child = cmd.spawn().expect("start node");
    wait_for_port(port);
    Emulator {
        url: format!("http://127.0.0.1:{port}"),
        port,
        child,
    }
}

//! Redis over TLS with the store's TLS settings, against the Debian `redis-server` serving TLS
//! on loopback with a CA made here by the `openssl` CLI: the CA file is what makes the server
//! trusted, a certificate for another host name is refused unless `tls_insecure` says
//! otherwise, and a server that requires client certificates (mTLS) accepts the configured
//! one and refuses a client without it. The `#insecure` URL fragment is refused by the
//! settings check.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use promo_attribution::redis::store::{Store, StoreError};
use promo_attribution::settings::{SettingsSources, StoreSettings};
use support::wait_until;

/// Runs `openssl ARGS` in `dir`, failing the test if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for `localhost` only (no IP address), and a client certificate.
fn make_certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-new", "-nodes", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=promo test CA",
    ]);
    openssl(dir, &ca);
    for (name, subject, extension) in [
        (
            "server",
            "/CN=localhost",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "/CN=promo-worker",
            "extendedKeyUsage=clientAuth\n",
        ),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), extension).expect("write extensions");
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let mut request = vec!["req", "-new", "-nodes"];
        request.extend(ec);
        request.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
        openssl(dir, &request);
        let crt = format!("{name}.crt");
        let ext = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ],
        );
    }
}

/// `redis-server` serving TLS only, on a free port; killed on drop.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    fn start(dir: &Path, require_client_certificates: bool) -> TlsRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let file = |name: &str| dir.join(name).display().to_string();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &file("server.crt")])
            .args(["--tls-key-file", &file("server.key")])
            .args(["--tls-ca-cert-file", &file("ca.crt")])
            .args([
                "--tls-auth-clients",
                if require_client_certificates {
                    "yes"
                } else {
                    "no"
                },
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (installed by scripts/services)");
        let listening = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(listening, "TLS redis on port {port} did not listen");
        TlsRedis { port, child }
    }

    fn settings(&self, host: &str, dir: &Path) -> StoreSettings {
        StoreSettings {
            redis_url: format!("rediss://{host}:{}", self.port).into(),
            key_prefix: support::unique_prefix("tls"),
            tls_ca_file: Some(dir.join("ca.crt")),
            connect_timeout_ms: 2000,
            io_timeout_ms: 2000,
            ..StoreSettings::default()
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects and reads the current version (none in a fresh server).
fn read_pointer(settings: &StoreSettings) -> Result<Option<u64>, StoreError> {
    Store::connect(settings)?.current_version()
}

/// Refused by the certificate check, not by anything else (a port, a timeout).
fn assert_certificate_refused(error: &StoreError) {
    let text = error.to_string();
    assert!(
        matches!(error, StoreError::Redis { .. }) && text.contains("certificate verify failed"),
        "{text}"
    );
}

fn tls_dir() -> (tempfile::TempDir, PathBuf) {
    // Makes sure redis-server is installed, as for every test that starts its own.
    let _ = support::redis_url();
    let dir = tempfile::tempdir().expect("temp dir");
    make_certificates(dir.path());
    let path = dir.path().to_path_buf();
    (dir, path)
}

#[test]
fn the_ca_file_is_trusted_and_a_wrong_host_name_is_refused() {
    let (_keep, dir) = tls_dir();
    let redis = TlsRedis::start(&dir, false);

    let good = redis.settings("localhost", &dir);
    assert_eq!(read_pointer(&good).expect("TLS with the CA file"), None);

    let untrusted = StoreSettings {
        tls_ca_file: None,
        ..good.clone()
    };
    let refused = read_pointer(&untrusted).expect_err("a self-made CA is not in the system store");
    assert_certificate_refused(&refused);

    // The certificate names localhost only.
    let wrong_host = redis.settings("127.0.0.1", &dir);
    let refused = read_pointer(&wrong_host).expect_err("a certificate for another host name");
    assert_certificate_refused(&refused);
    assert!(refused.to_string().contains("mismatch"), "{refused}");

    let insecure = StoreSettings {
        tls_insecure: true,
        tls_ca_file: None,
        ..wrong_host
    };
    assert_eq!(
        read_pointer(&insecure).expect("tls_insecure accepts any certificate"),
        None
    );
}

#[test]
fn mutual_tls_needs_the_client_certificate() {
    let (_keep, dir) = tls_dir();
    let redis = TlsRedis::start(&dir, true);

    let without = redis.settings("localhost", &dir);
    let refused = read_pointer(&without)
        .expect_err("a server requiring client certificates accepted a client without one");
    eprintln!("without a client certificate: {refused}");
    let with = StoreSettings {
        tls_cert_file: Some(dir.join("client.crt")),
        tls_key_file: Some(dir.join("client.key")),
        ..without
    };
    assert_eq!(
        read_pointer(&with).expect("mTLS with the client certificate"),
        None
    );
}

#[test]
fn the_insecure_url_fragment_is_refused_with_a_pointer_to_the_setting() {
    let load = |overrides: &[&str]| {
        SettingsSources {
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
        .load()
    };
    let refused = load(&["store.redis_url=rediss://host:6380/#insecure"])
        .expect_err("#insecure is refused")
        .to_string();
    assert!(refused.contains("store.tls_insecure"), "{refused}");
    let half = load(&[
        "store.redis_url=rediss://host:6380",
        "store.tls_cert_file=/c.pem",
    ])
    .expect_err("a certificate without its key")
    .to_string();
    assert!(half.contains("tls_key_file"), "{half}");
    let plain = load(&[
        "store.redis_url=redis://host:6379",
        "store.tls_insecure=true",
    ])
    .expect_err("TLS settings without rediss://")
    .to_string();
    assert!(plain.contains("rediss://"), "{plain}");
    assert!(
        load(&[
            "store.redis_url=rediss://host:6380",
            "store.tls_insecure=true"
        ])
        .is_ok()
    );
}

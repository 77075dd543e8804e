//! A test PKI made at test time with the `openssl` command line tool: a private CA, a
//! server certificate it signed for 127.0.0.1 and localhost, a client certificate it signed,
//! and an unrelated CA that signed neither; EC P-256 keys, valid for two days.
//!
//! [`TestPki::new`] keeps the files on disk (for brokers and daemons that read paths);
//! [`shared`] makes one set per test process and holds it in memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::TempDir;

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
";

/// The PKI's files in a temporary directory (removed on drop): `ca.crt`/`ca.key`,
/// `other-ca.crt`/`other-ca.key`, `server.crt`/`server.key`, `client.crt`/`client.key`.
#[derive(Debug)]
pub struct TestPki {
    dir: TempDir,
}

impl TestPki {
    /// Makes a fresh CA, unrelated CA, server certificate and client certificate.
    pub fn new() -> TestPki {
        let pki = TestPki {
            dir: TempDir::new("pki"),
        };
        std::fs::write(pki.path("openssl.cnf"), OPENSSL_CNF).unwrap();
        pki.self_signed_ca("ca", "Spillway test CA");
        pki.self_signed_ca("other-ca", "Some other CA");
        pki.issued("server", "localhost", "server");
        pki.issued("client", "spillway-test-client", "client");
        pki
    }

    /// The path of one of the PKI's files (see [`TestPki`]).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The contents of all the certificates and keys.
    pub fn pem(&self) -> Pem {
        let read = |n: &str| std::fs::read(self.path(n)).unwrap();
        Pem {
            ca: read("ca.crt"),
            other_ca: read("other-ca.crt"),
            server_cert: read("server.crt"),
            server_key: read("server.key"),
            client_cert: read("client.crt"),
            client_key: read("client.key"),
        }
    }

    fn openssl(&self, args: &[&str]) {
        openssl(self.dir.path(), args);
    }

    /// `<name>.crt` and `<name>.key`.
    fn self_signed_ca(&self, name: &str, cn: &str) {
        let (key, crt, subj) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("/CN={cn}"),
        );
        let mut args = vec!["req", "-x509", "-new", "-extensions", "ca", "-days", "2"];
        args.extend(new_key_args(&key));
        args.extend(["-out", &crt, "-subj", &subj]);
        self.openssl(&args);
    }

    /// `<name>.crt` and `<name>.key`, signed by the CA, with the extensions of section `ext`.
    fn issued(&self, name: &str, cn: &str, ext: &str) {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let subj = format!("/CN={cn}");
        let mut args = vec!["req", "-new"];
        args.extend(new_key_args(&key));
        args.extend(["-out", &csr, "-subj", &subj]);
        self.openssl(&args);
        self.openssl(&[
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
            "-extfile",
            "openssl.cnf",
            "-extensions",
            ext,
            "-out",
            &crt,
        ]);
    }
}

impl Default for TestPki {
    fn default() -> TestPki {
        TestPki::new()
    }
}

/// The certificates and keys of a [`TestPki`] (PEM).
#[derive(Debug)]
pub struct Pem {
    pub ca: Vec<u8>,
    pub other_ca: Vec<u8>,
    pub server_cert: Vec<u8>,
    pub server_key: Vec<u8>,
    pub client_cert: Vec<u8>,
    pub client_key: Vec<u8>,
}

/// One test PKI per test process, read into memory (its directory is removed).
pub fn shared() -> &'static Pem {
    static PEM: OnceLock<Pem> = OnceLock::new();
    PEM.get_or_init(|| TestPki::new().pem())
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req` arguments making a new P-256 key into `key`.
fn new_key_args(key: &str) -> [&str; 9] {
    [
        "-config",
        "openssl.cnf",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key,
    ]
}

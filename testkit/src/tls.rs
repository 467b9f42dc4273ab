//! Self-signed CA and a server certificate for 127.0.0.1/localhost, made with the `openssl` CLI,
//! and htpasswd files made with the `htpasswd` CLI (apache2-utils).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// PEM files of one generated CA and server certificate.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate (PEM); trust this in clients.
    pub ca_pem: PathBuf,
    /// Server certificate (PEM), SAN = IP:127.0.0.1, DNS:localhost, signed by the CA.
    pub cert_pem: PathBuf,
    /// Server private key (PEM, PKCS#8, P-256).
    pub key_pem: PathBuf,
}

fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Generates `ca.pem`, `ca.key`, `server.pem`, `server.key` in `dir` (valid for 7 days).
pub fn generate(dir: &Path) -> Result<TlsFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_pem = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let csr = dir.join("server.csr");
    let cert_pem = dir.join("server.pem");
    let key_pem = dir.join("server.key");
    let ext = dir.join("server.ext");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca_pem)
        .args(["-days", "7", "-subj", "/CN=preheat-testkit CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]))?;
    run(Command::new("openssl")
        .arg("req")
        .args(ec)
        .arg("-keyout")
        .arg(&key_pem)
        .arg("-out")
        .arg(&csr)
        .args(["-subj", "/CN=127.0.0.1"]))?;
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )
    .with_context(|| format!("writing {}", ext.display()))?;
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "7", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca_pem)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-out")
        .arg(&cert_pem)
        .arg("-extfile")
        .arg(&ext))?;
    Ok(TlsFiles {
        ca_pem,
        cert_pem,
        key_pem,
    })
}

/// Writes a bcrypt htpasswd file with one user (`htpasswd -Bbn`).
pub fn write_htpasswd(path: &Path, user: &str, password: &str) -> Result<()> {
    let line = run(Command::new("htpasswd").args(["-Bbn", user, password]))?;
    std::fs::write(path, line).with_context(|| format!("writing {}", path.display()))
}

//! Registry credentials from a Docker `config.json` (the format of a mounted `.dockerconfigjson` pull secret).
//!
//! Only the `auths` map is read; credential helpers (`credsStore`) are not run. Keys may be bare hosts
//! (`host:5000`) or URLs (`https://index.docker.io/v1/`); Docker Hub answers to several names.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::error::RegistryError;

/// Names under which Docker Hub credentials may be stored, normalized (scheme and path removed).
const DOCKER_HUB_KEYS: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// One registry's credential.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// User name and password (or access token used as a password).
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token realm.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// The `auths` of a Docker config file, keyed by normalized registry host.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    auths: HashMap<String, Credential>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    auths: HashMap<String, RawEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

impl DockerConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let bytes = std::fs::read(path).map_err(|e| RegistryError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(&bytes).map_err(|reason| RegistryError::Config {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses the JSON text of a config file; the error says which entry is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawFile =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid json: {e}"))?;
        let mut auths = HashMap::new();
        for (key, entry) in raw.auths {
            if let Some(cred) = entry
                .credential()
                .map_err(|e| format!("entry {key:?}: {e}"))?
            {
                auths.insert(normalize_key(&key), cred);
            }
        }
        Ok(Self { auths })
    }

    /// The credential for `registry` (a reference's registry, e.g. `docker.io` or `host:5000`).
    pub fn lookup(&self, registry: &str) -> Option<&Credential> {
        let host = normalize_key(registry);
        if DOCKER_HUB_KEYS.contains(&host.as_str()) {
            return DOCKER_HUB_KEYS.iter().find_map(|k| self.auths.get(*k));
        }
        self.auths.get(&host)
    }

    pub fn is_empty(&self) -> bool {
        self.auths.is_empty()
    }
}

impl RawEntry {
    fn credential(self) -> Result<Option<Credential>, String> {
        if let Some(token) = self.identitytoken.filter(|t| !t.is_empty()) {
            return Ok(Some(Credential::IdentityToken(token)));
        }
        if let (Some(username), Some(password)) = (&self.username, &self.password) {
            if !username.is_empty() {
                return Ok(Some(Credential::Basic {
                    username: username.clone(),
                    password: password.clone(),
                }));
            }
        }
        let Some(auth) = self.auth.filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "\"auth\" is not valid base64".to_string())?;
        let text = String::from_utf8(decoded).map_err(|_| "\"auth\" is not utf-8".to_string())?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| "\"auth\" must encode \"user:password\"".to_string())?;
        Ok(Some(Credential::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }))
    }
}

/// `https://index.docker.io/v1/` → `index.docker.io`; `Host:5000` → `host:5000`.
fn normalize_key(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    host.to_ascii_lowercase()
}

/// The config file the CLI uses by default: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`,
/// when it exists. Callers pass the environment in; this function reads no variables itself.
pub fn default_docker_config(
    docker_config_env: Option<&str>,
    home: Option<&str>,
) -> Option<PathBuf> {
    let path = match (docker_config_env, home) {
        (Some(dir), _) if !dir.is_empty() => Path::new(dir).join("config.json"),
        (_, Some(home)) if !home.is_empty() => Path::new(home).join(".docker/config.json"),
        _ => return None,
    };
    path.is_file().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn basic(u: &str, p: &str) -> Credential {
        Credential::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn reads_all_three_entry_forms() {
        let json = format!(
            r#"{{"auths": {{
                "reg.example:5000": {{"auth": "{}"}},
                "other.example": {{"username": "bob", "password": "pw"}},
                "acr.example": {{"auth": "", "identitytoken": "refresh-me"}},
                "empty.example": {{}}
            }}, "credsStore": "desktop"}}"#,
            b64("alice:s3cr:et")
        );
        let cfg = DockerConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(
            cfg.lookup("reg.example:5000"),
            Some(&basic("alice", "s3cr:et"))
        );
        assert_eq!(cfg.lookup("other.example"), Some(&basic("bob", "pw")));
        assert_eq!(
            cfg.lookup("acr.example"),
            Some(&Credential::IdentityToken("refresh-me".into()))
        );
        assert_eq!(cfg.lookup("empty.example"), None);
        assert_eq!(cfg.lookup("reg.example"), None, "port is part of the key");
        assert_eq!(cfg.lookup("unknown.example"), None);
    }

    #[test]
    fn docker_hub_has_many_names() {
        for key in [
            "https://index.docker.io/v1/",
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
        ] {
            let json = format!(r#"{{"auths": {{"{key}": {{"auth": "{}"}}}}}}"#, b64("u:p"));
            let cfg = DockerConfig::parse(json.as_bytes()).unwrap();
            for registry in ["docker.io", "registry-1.docker.io", "index.docker.io"] {
                assert_eq!(
                    cfg.lookup(registry),
                    Some(&basic("u", "p")),
                    "{key} for {registry}"
                );
            }
        }
    }

    #[test]
    fn url_keys_and_case_are_normalized() {
        let json = format!(
            r#"{{"auths": {{"https://Reg.Example:5000/v2/": {{"auth": "{}"}}}}}}"#,
            b64("u:p")
        );
        let cfg = DockerConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(cfg.lookup("reg.example:5000"), Some(&basic("u", "p")));
    }

    #[test]
    fn bad_entries_are_named() {
        let err = DockerConfig::parse(br#"{"auths": {"h": {"auth": "!!!"}}}"#).unwrap_err();
        assert!(err.contains("\"h\"") && err.contains("base64"), "{err}");
        let err = DockerConfig::parse(
            format!(r#"{{"auths": {{"h": {{"auth": "{}"}}}}}}"#, b64("nocolon")).as_bytes(),
        )
        .unwrap_err();
        assert!(err.contains("user:password"), "{err}");
        assert!(DockerConfig::parse(b"not json")
            .unwrap_err()
            .contains("invalid json"));
        assert!(DockerConfig::parse(b"{}").unwrap().is_empty());
    }

    #[test]
    fn debug_redacts_secrets() {
        let text = format!(
            "{:?} {:?}",
            basic("u", "hunter2"),
            Credential::IdentityToken("tok".into())
        );
        assert!(
            !text.contains("hunter2") && !text.contains("tok)"),
            "{text}"
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let err = DockerConfig::load(&missing).unwrap_err();
        assert!(err.to_string().contains("nope.json"), "{err}");
        let good = dir.path().join("config.json");
        std::fs::write(
            &good,
            format!(r#"{{"auths": {{"h:1": {{"auth": "{}"}}}}}}"#, b64("a:b")),
        )
        .unwrap();
        assert_eq!(
            DockerConfig::load(&good).unwrap().lookup("h:1"),
            Some(&basic("a", "b"))
        );
        assert_eq!(
            default_docker_config(Some(dir.path().to_str().unwrap()), None),
            Some(good)
        );
        assert_eq!(default_docker_config(None, Some("/nonexistent-home")), None);
    }
}

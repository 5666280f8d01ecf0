//! The policy store in force: loaded from the policy file at start, reloaded on SIGHUP and
//! when the file changes, changed through the admin API with an atomic write (temp file +
//! rename) so a crash never leaves half a file. A file with an error is rejected with a
//! message naming the line, and the policy in force stays in force. Every change applies to
//! the very next join.

use crate::config::PolicyConfig;
use crate::core::policy::{CallingE2ee, Effective, PolicyError, PolicySet, GLOBAL};
use metrics::Counter;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;
use thiserror::Error;
use tracing::{error, info};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write policy file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Invalid { path: String, source: PolicyError },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The cluster's shared store (the directory) could not be read or written.
    #[error("shared policy store: {0}")]
    Shared(String),
}

pub struct PolicyStore {
    current: RwLock<Arc<PolicySet>>,
    path: Option<PathBuf>,
    global_default: CallingE2ee,
    /// Modification time and length of the file as last loaded, to notice edits.
    seen: Mutex<Option<(SystemTime, u64)>>,
    /// Serialises writers so two admin changes cannot interleave.
    write_lock: Mutex<()>,
    /// The shared (cluster) version in force; 0 when the relay runs alone.
    shared_version: std::sync::atomic::AtomicU64,
    /// Reloads of the file that put it in force, and that rejected it.
    reloaded: Counter,
    rejected: Counter,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl PolicyStore {
    pub fn load(cfg: &PolicyConfig) -> Result<Self, StoreError> {
        let set = match &cfg.file {
            Some(p) => read(p)?,
            None => PolicySet::default(),
        };
        Ok(PolicyStore {
            current: RwLock::new(Arc::new(set)),
            seen: Mutex::new(cfg.file.as_deref().and_then(stamp)),
            path: cfg.file.clone(),
            global_default: cfg.global,
            write_lock: Mutex::new(()),
            shared_version: std::sync::atomic::AtomicU64::new(0),
            reloaded: Counter::noop(),
            rejected: Counter::noop(),
        })
    }

    /// Count file reloads in `blindrelay_policy_reloads_total{result}` (`ok`, `rejected`).
    pub fn with_metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.reloaded = metrics.policy_reload("ok");
        self.rejected = metrics.policy_reload("rejected");
        self
    }

    /// The set in force, with `Global` filled in from the config when the file has none.
    pub fn snapshot(&self) -> Arc<PolicySet> {
        let cur = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if cur.policies.contains_key(GLOBAL) {
            return cur;
        }
        let mut s = (*cur).clone();
        s.policies.insert(
            GLOBAL.to_string(),
            crate::core::policy::Policy {
                calling_e2ee: self.global_default,
            },
        );
        Arc::new(s)
    }

    /// The set in force as stored, without the config's `Global` filled in.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The shared version in force (cluster mode).
    pub fn shared_version(&self) -> u64 {
        self.shared_version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Put a set from the cluster's shared store in force, unless a newer version already
    /// is: versions apply in order even when notices and re-reads race. The file is not
    /// written: in a cluster the directory holds the store, and the file only seeds it.
    pub fn apply_shared(&self, set: PolicySet, version: u64) -> bool {
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        if version <= self.shared_version() {
            return false;
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        self.shared_version
            .store(version, std::sync::atomic::Ordering::Release);
        true
    }

    pub fn effective(&self, user: &str, tenant: &str) -> Effective {
        self.snapshot().effective(user, tenant)
    }

    /// Re-read the file if it changed (or always, with `force`). On error the policy in
    /// force stays and the error is returned (and logged).
    pub fn reload(&self, force: bool) -> Result<bool, StoreError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let now = stamp(path);
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !force && now == *seen {
                return Ok(false);
            }
        }
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = now;
        match read(path) {
            Ok(set) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                self.reloaded.increment(1);
                info!(path = %path.display(), "policy file reloaded");
                Ok(true)
            }
            Err(e) => {
                self.rejected.increment(1);
                error!(error = %e, "policy file rejected; the policy in force stays in force");
                Err(e)
            }
        }
    }

    /// Apply a change, persist it atomically (when there is a file), then put it in force.
    pub fn update(
        &self,
        change: impl FnOnce(&mut PolicySet) -> Result<(), PolicyError>,
    ) -> Result<(), StoreError> {
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = (**self.current.read().unwrap_or_else(|p| p.into_inner())).clone();
        change(&mut next)?;
        next.validate()?;
        if let Some(path) = &self.path {
            write_atomically(path, &next.to_toml())?;
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamp(path);
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }
}

fn read(path: &Path) -> Result<PolicySet, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|source| StoreError::Read {
        path: path.display().to_string(),
        source,
    })?;
    PolicySet::parse(&text).map_err(|source| StoreError::Invalid {
        path: path.display().to_string(),
        source,
    })
}

fn write_atomically(path: &Path, text: &str) -> Result<(), StoreError> {
    let err = |source| StoreError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("policies"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(b"# blindrelay E2EE policies (written by the admin API)\n")
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

//! Who may turn end-to-end encryption on, modelled on Teams' enhanced encryption policy
//! (`CsTeamsEnhancedEncryptionPolicy`, setting `CallingEndtoEndEncryptionEnabledType`).
//!
//! A named policy says `calling_e2ee = Disabled | DisabledUserOverride | Required`. Users are
//! granted a policy by name; a tenant may name its default; the `Global` policy applies to
//! everyone else and is `Disabled` when nothing says otherwise. Pure data: loading from a
//! file, hot reload and the admin API live in the IO layer.

use blindrelay_protocol::signal::E2eeOption;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// The name of the policy that applies when no grant or tenant default does.
pub const GLOBAL: &str = "Global";

/// Whether a user may, or must, encrypt calls end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallingE2ee {
    /// The E2EE option is hidden; the user's calls are standard.
    Disabled,
    /// Off unless the user turns it on for a call.
    DisabledUserOverride,
    /// Every call of this user is E2EE; a peer that cannot encrypt is refused.
    Required,
}

impl CallingE2ee {
    pub fn as_str(self) -> &'static str {
        match self {
            CallingE2ee::Disabled => "Disabled",
            CallingE2ee::DisabledUserOverride => "DisabledUserOverride",
            CallingE2ee::Required => "Required",
        }
    }

    /// What the client's capabilities say.
    pub fn option(self) -> E2eeOption {
        match self {
            CallingE2ee::Disabled => E2eeOption::Hidden,
            CallingE2ee::DisabledUserOverride => E2eeOption::Available,
            CallingE2ee::Required => E2eeOption::Required,
        }
    }
}

impl std::str::FromStr for CallingE2ee {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        match s {
            "Disabled" => Ok(CallingE2ee::Disabled),
            "DisabledUserOverride" => Ok(CallingE2ee::DisabledUserOverride),
            "Required" => Ok(CallingE2ee::Required),
            _ => Err(PolicyError::BadValue(s.to_string())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub calling_e2ee: CallingE2ee,
}

/// The whole policy store, as the TOML policy file holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySet {
    /// Named policies; `Global` among them applies by default.
    #[serde(default)]
    pub policies: BTreeMap<String, Policy>,
    /// Tenant id -> policy name.
    #[serde(default)]
    pub tenants: BTreeMap<String, String>,
    /// `user@tenant` (or a bare user id, any tenant) -> policy name.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("policy file: {0}")]
    Parse(String),
    #[error("`{0}` is not a calling_e2ee value (Disabled, DisabledUserOverride, Required)")]
    BadValue(String),
    #[error("{what} `{who}` names policy `{policy}`, which does not exist")]
    UnknownPolicy {
        what: &'static str,
        who: String,
        policy: String,
    },
    #[error("policy name must be 1 to 64 characters of letters, digits, '-' or '_'")]
    BadName,
}

/// Where an effective policy came from, for `policy show` and the reasons users read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Effective {
    pub policy: String,
    pub calling_e2ee: CallingE2ee,
    /// `user`, `tenant` or `global`.
    pub source: &'static str,
}

impl PolicySet {
    /// Parse a policy file; errors carry the line and column the TOML parser reports.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let set: PolicySet = toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        set.validate()?;
        Ok(set)
    }

    pub fn to_toml(&self) -> String {
        // Only maps of strings and small structs: serialization cannot fail.
        toml::to_string_pretty(self).unwrap_or_else(|e| unreachable!("policy set serializes: {e}"))
    }

    /// Every grant and tenant default names a policy that exists.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for name in self.policies.keys() {
            valid_name(name)?;
        }
        for (what, map) in [("tenant", &self.tenants), ("user", &self.users)] {
            for (who, policy) in map {
                if !self.policies.contains_key(policy) && policy != GLOBAL {
                    return Err(PolicyError::UnknownPolicy {
                        what,
                        who: who.clone(),
                        policy: policy.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// `user` in `tenant`: a grant for `user@tenant`, else for bare `user`, else the
    /// tenant's default, else `Global` (Disabled when `Global` is not defined).
    pub fn effective(&self, user: &str, tenant: &str) -> Effective {
        let lookup = |name: &str| self.policies.get(name).map(|p| p.calling_e2ee);
        let scoped = format!("{user}@{tenant}");
        for key in [scoped.as_str(), user] {
            if let Some(name) = self.users.get(key) {
                if let Some(v) = lookup(name) {
                    return Effective {
                        policy: name.clone(),
                        calling_e2ee: v,
                        source: "user",
                    };
                }
            }
        }
        if let Some(name) = self.tenants.get(tenant) {
            if let Some(v) = lookup(name) {
                return Effective {
                    policy: name.clone(),
                    calling_e2ee: v,
                    source: "tenant",
                };
            }
        }
        Effective {
            policy: GLOBAL.to_string(),
            calling_e2ee: lookup(GLOBAL).unwrap_or(CallingE2ee::Disabled),
            source: "global",
        }
    }

    /// Create or change a named policy (`Set-/New-CsTeamsEnhancedEncryptionPolicy`).
    pub fn set_policy(&mut self, name: &str, value: CallingE2ee) -> Result<(), PolicyError> {
        valid_name(name)?;
        self.policies.insert(
            name.to_string(),
            Policy {
                calling_e2ee: value,
            },
        );
        Ok(())
    }

    /// Grant a policy to a user (`Grant-CsTeamsEnhancedEncryptionPolicy`); `None` removes
    /// the grant.
    pub fn grant(&mut self, user: &str, policy: Option<&str>) -> Result<(), PolicyError> {
        match policy {
            None => {
                self.users.remove(user);
            }
            Some(p) => {
                if !self.policies.contains_key(p) && p != GLOBAL {
                    return Err(PolicyError::UnknownPolicy {
                        what: "user",
                        who: user.into(),
                        policy: p.into(),
                    });
                }
                self.users.insert(user.to_string(), p.to_string());
            }
        }
        Ok(())
    }
}

fn valid_name(name: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadName)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[policies.Global]
calling_e2ee = "DisabledUserOverride"
[policies.NoE2ee]
calling_e2ee = "Disabled"
[policies.MustEncrypt]
calling_e2ee = "Required"

[tenants]
contoso = "MustEncrypt"

[users]
"alice@fabrikam" = "NoE2ee"
"#;

    #[test]
    fn effective_policy_resolution() {
        let p = PolicySet::parse(FILE).unwrap();
        assert_eq!(
            p.effective("alice", "fabrikam").calling_e2ee,
            CallingE2ee::Disabled
        );
        assert_eq!(p.effective("alice", "fabrikam").source, "user");
        assert_eq!(
            p.effective("bob", "contoso").calling_e2ee,
            CallingE2ee::Required
        );
        assert_eq!(
            p.effective("carol", "other").calling_e2ee,
            CallingE2ee::DisabledUserOverride
        );
        assert_eq!(
            PolicySet::default().effective("x", "y").calling_e2ee,
            CallingE2ee::Disabled
        );
    }

    #[test]
    fn errors_name_the_line_or_the_policy() {
        let e = PolicySet::parse("[policies.X]\ncalling_e2ee = \"Sometimes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = PolicySet::parse("[users]\nbob = \"Nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Nope"), "{e}");
        let mut p = PolicySet::parse(FILE).unwrap();
        assert!(p.grant("dave", Some("Missing")).is_err());
        p.set_policy("Strict", CallingE2ee::Required).unwrap();
        p.grant("dave", Some("Strict")).unwrap();
        assert_eq!(PolicySet::parse(&p.to_toml()).unwrap(), p);
        assert_eq!(
            p.set_policy("bad name", CallingE2ee::Required),
            Err(PolicyError::BadName)
        );
    }
}

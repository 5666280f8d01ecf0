//! A network namespace the bench makes, joined to this one by a veth pair: the shaped hop
//! (tbf on this end) and Janus (libnice skips loopback, so Janus needs an interface of its
//! own) both stand on one. Needs root (CAP_NET_ADMIN).

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;

/// The namespace and its veth pair, a /30 across them; removed on drop (the pair goes with
/// the namespace holding one end).
pub struct VethNamespace {
    pub name: String,
    /// This namespace's end of the pair, and its address.
    pub dev: String,
    pub here: Ipv4Addr,
    /// The address of the far end, in the namespace.
    pub there: Ipv4Addr,
}

/// Run a command (`ip`, `tc`), failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl VethNamespace {
    /// Namespace `br{tag}{pid}n{k}` on the k-th /30 of 10.`net`.x.0/24, the far end
    /// `4k+1` and this end `4k+2`, where k counts this process's namespaces (tests in one
    /// binary run in parallel and may each make one with the same tag). Leftovers of a
    /// run that was killed with the same pid are removed first. `tag` is short: interface
    /// names are at most 15 bytes.
    pub fn create(tag: &str, net: u8) -> Result<VethNamespace> {
        static MADE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let k = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 63;
        let id = std::process::id() % 60_000;
        let name = format!("br{tag}{id}n{k}");
        let (far, dev) = (format!("br{tag}a{id}n{k}"), format!("br{tag}b{id}n{k}"));
        let x = (id % 250) as u8;
        let there = Ipv4Addr::new(10, net, x, 4 * k + 1);
        let here = Ipv4Addr::new(10, net, x, 4 * k + 2);
        let _ = ip(&["ip", "netns", "del", &name]);
        let _ = ip(&["ip", "link", "del", &dev]);
        ip(&["ip", "netns", "add", &name])?;
        // From here on, drop removes what was made.
        let ns = VethNamespace {
            name,
            dev,
            here,
            there,
        };
        let n = ns.name.as_str();
        ip(&[
            "ip", "link", "add", &far, "type", "veth", "peer", "name", &ns.dev,
        ])?;
        ip(&["ip", "link", "set", &far, "netns", n])?;
        ip(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            &format!("{there}/30"),
            "dev",
            &far,
        ])?;
        ip(&["ip", "-n", n, "link", "set", &far, "up"])?;
        ip(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        ip(&["ip", "addr", "add", &format!("{here}/30"), "dev", &ns.dev])?;
        ip(&["ip", "link", "set", &ns.dev, "up"])?;
        Ok(ns)
    }
}

impl Drop for VethNamespace {
    fn drop(&mut self) {
        if let Err(e) = ip(&["ip", "netns", "del", &self.name]) {
            eprintln!("remove {}: {e:#}", self.name);
        }
    }
}

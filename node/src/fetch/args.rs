//! The election's command-line flags (each with its env twin), for the agent.

use std::time::Duration;

use crate::lease::{LeaseConfig, LeaseElector, LeaseError, LeaseMetrics, LeaseMode};

/// `--lease`, `--k8s-namespace`, `--k8s-lock-timeout`, `--lease-contenders` and their env twins.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaseArgs {
    /// How the one registry puller per image is elected: `kube` (a coordination.k8s.io Lease) or
    /// `none` (the top-ranked live swarm member pulls). Default: `kube` inside a cluster
    /// (KUBERNETES_SERVICE_HOST set), `none` elsewhere.
    #[arg(long = "lease", env = "LEASE", value_enum)]
    pub lease: Option<LeaseMode>,
    /// Namespace of the Leases.
    #[arg(
        long = "k8s-namespace",
        env = "K8S_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Lease duration (`leaseDurationSeconds`, whole seconds); the puller renews every third of it
    /// and a dead puller is replaced after it.
    #[arg(long = "k8s-lock-timeout", env = "K8S_LOCK_TIMEOUT", default_value = "5m",
          value_parser = parse_lock_timeout)]
    pub lock_timeout: Duration,
    /// How many top-ranked nodes contend for each image's Lease; the others wait for the swarm.
    #[arg(long = "lease-contenders", env = "LEASE_CONTENDERS", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub contenders: u16,
}

fn parse_lock_timeout(s: &str) -> Result<Duration, String> {
    let d = preheat_core::units::parse_duration(s).map_err(|e| e.to_string())?;
    if d.subsec_nanos() != 0 || d.as_secs() == 0 || i32::try_from(d.as_secs()).is_err() {
        return Err(format!(
            "{s:?} is not a whole number of seconds between 1s and {}s",
            i32::MAX
        ));
    }
    Ok(d)
}

impl LeaseArgs {
    /// The mode in effect: the flag, else `kube` when `in_cluster`.
    pub fn mode(&self, in_cluster: bool) -> LeaseMode {
        self.lease.unwrap_or(if in_cluster {
            LeaseMode::Kube
        } else {
            LeaseMode::None
        })
    }

    /// The election's configuration for `node_name` (the Lease holder identity); the in-cluster
    /// default is taken from `KUBERNETES_SERVICE_HOST`.
    pub fn config(&self, node_name: &str) -> Result<LeaseConfig, LeaseError> {
        // Read here, once at start-up, like every other flag's env twin.
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty());
        self.config_for(node_name, in_cluster)
    }

    /// The elector for this node: `member_id` must be its swarm peer id (what [`super::MemberView`]
    /// ranks); in `LEASE=kube` the kube client comes from the in-cluster configuration or the
    /// kubeconfig, and without one the election runs coordination-free (logged).
    pub async fn elector(
        &self,
        node_name: &str,
        member_id: impl Into<String>,
        metrics: LeaseMetrics,
    ) -> Result<LeaseElector, LeaseError> {
        LeaseElector::from_environment(self.config(node_name)?, member_id, metrics).await
    }

    /// [`Self::config`] with the cluster detection given.
    pub fn config_for(&self, node_name: &str, in_cluster: bool) -> Result<LeaseConfig, LeaseError> {
        let secs = self.lock_timeout.as_secs();
        if secs == 0 || i32::try_from(secs).is_err() {
            return Err(LeaseError::Duration(self.lock_timeout));
        }
        if self.contenders == 0 {
            return Err(LeaseError::NoContenders);
        }
        let mut cfg = LeaseConfig::new(self.mode(in_cluster), self.namespace.clone(), node_name);
        cfg.lease_duration = self.lock_timeout;
        cfg.contenders = usize::from(self.contenders);
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        lease: LeaseArgs,
    }

    #[test]
    fn defaults_follow_the_seed_deployment() {
        let cli = Cli::try_parse_from(["x"]).expect("parse");
        let c = cli.lease.config_for("node-a", false).expect("config");
        assert_eq!(c.mode, LeaseMode::None);
        assert_eq!(c.namespace, "default");
        assert_eq!(c.lease_duration, Duration::from_secs(300));
        assert_eq!(c.contenders, 3);
        assert_eq!(c.node_name, "node-a");
        let c = cli.lease.config_for("node-a", true).expect("config");
        assert_eq!(c.mode, LeaseMode::Kube);
    }

    #[test]
    fn flags_are_parsed_and_checked() {
        let cli = Cli::try_parse_from([
            "x",
            "--lease",
            "none",
            "--k8s-namespace",
            "preheat",
            "--k8s-lock-timeout",
            "90s",
            "--lease-contenders",
            "5",
        ])
        .expect("parse");
        let c = cli.lease.config_for("n", true).expect("config");
        assert_eq!(
            (c.mode, c.namespace.as_str(), c.lease_duration, c.contenders),
            (LeaseMode::None, "preheat", Duration::from_secs(90), 5)
        );
        for bad in [
            ["x", "--k8s-lock-timeout", "1500ms"],
            ["x", "--k8s-lock-timeout", "0s"],
            ["x", "--lease-contenders", "0"],
            ["x", "--lease", "etcd"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} accepted");
        }
    }
}

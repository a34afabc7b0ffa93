//! Where the rule set in force came from (a label of `/readyz` and the metrics).

/// Where the rule set in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConfigSource {
    /// Nothing yet: an empty table, waiting for the control plane.
    None = 0,
    /// The `--config` file, or a rule set pushed with `PUT /config`.
    File = 1,
    /// The snapshot kept on disk by an earlier run, read at startup.
    Snapshot = 2,
    /// A snapshot received on the control-plane Watch stream.
    ControlPlane = 3,
}

impl ConfigSource {
    /// Every source, in label order.
    pub const ALL: [ConfigSource; 4] = [
        ConfigSource::None,
        ConfigSource::File,
        ConfigSource::Snapshot,
        ConfigSource::ControlPlane,
    ];

    /// The label used in `/readyz` and the `router_config_source` metric.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigSource::None => "none",
            ConfigSource::File => "file",
            ConfigSource::Snapshot => "snapshot",
            ConfigSource::ControlPlane => "control_plane",
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => ConfigSource::File,
            2 => ConfigSource::Snapshot,
            3 => ConfigSource::ControlPlane,
            _ => ConfigSource::None,
        }
    }
}

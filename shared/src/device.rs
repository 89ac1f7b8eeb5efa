//! Windows devices as this service sees them: their lifecycle state and how they can be reached.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};
use strum::EnumIter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, EnumIter)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeviceState {
    Active,
    Provisioning,
    Unknown,
    DeleteRequested,
    Deleted,
}

/// What a refresh request for a device in a given state gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshable {
    Yes,
    /// The device exists but cannot take commands yet (409).
    NotActive,
    /// The device is gone as far as callers are concerned (404).
    Gone,
}

impl DeviceState {
    pub const ALL: [DeviceState; 5] = [
        DeviceState::Active,
        DeviceState::Provisioning,
        DeviceState::Unknown,
        DeviceState::DeleteRequested,
        DeviceState::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Active => "ACTIVE",
            DeviceState::Provisioning => "PROVISIONING",
            DeviceState::Unknown => "UNKNOWN",
            DeviceState::DeleteRequested => "DELETE_REQUESTED",
            DeviceState::Deleted => "DELETED",
        }
    }

    pub fn refreshable(self) -> Refreshable {
        match self {
            DeviceState::Active => Refreshable::Yes,
            DeviceState::Provisioning | DeviceState::Unknown => Refreshable::NotActive,
            DeviceState::DeleteRequested | DeviceState::Deleted => Refreshable::Gone,
        }
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown device state '{s}' (expected ACTIVE, PROVISIONING, UNKNOWN, DELETE_REQUESTED or DELETED)")
            })
    }
}

/// The push gateway a category was (or is to be) delivered through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, EnumIter)]
#[serde(rename_all = "lowercase")]
pub enum Gateway {
    Agent,
    Wns,
}

impl Gateway {
    pub fn as_str(self) -> &'static str {
        match self {
            Gateway::Agent => "agent",
            Gateway::Wns => "wns",
        }
    }
}

impl fmt::Display for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Gateway {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Gateway::Agent),
            "wns" => Ok(Gateway::Wns),
            other => Err(format!("unknown gateway '{other}' (expected agent or wns)")),
        }
    }
}

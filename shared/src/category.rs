//! The inventory categories a caller may ask a device to re-report, and the one table that maps
//! each to the OMA-DM nodes the device agent re-reads.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};
use strum::EnumIter;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, EnumIter,
)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Hardware,
    Applications,
    Certificates,
    Network,
    Security,
    Os,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Hardware,
        Category::Applications,
        Category::Certificates,
        Category::Network,
        Category::Security,
        Category::Os,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Hardware => "hardware",
            Category::Applications => "applications",
            Category::Certificates => "certificates",
            Category::Network => "network",
            Category::Security => "security",
            Category::Os => "os",
        }
    }

    /// The OMA-DM paths the agent refreshes for this category: the only copy of this table.
    pub fn oma_dm_paths(self) -> &'static [&'static str] {
        match self {
            Category::Hardware => &["./DevDetail", "./DevInfo"],
            Category::Applications => &[
                "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppInventoryResults",
                "./Device/Vendor/MSFT/EnterpriseDesktopAppManagement/MSI",
            ],
            Category::Certificates => &[
                "./Device/Vendor/MSFT/CertificateStore",
                "./Device/Vendor/MSFT/RootCATrustedCertificates",
            ],
            Category::Network => &[
                "./Vendor/MSFT/DeviceStatus/NetworkIdentifiers",
                "./Vendor/MSFT/DeviceStatus/CellularIdentities",
            ],
            Category::Security => &[
                "./Vendor/MSFT/DeviceStatus/TPM",
                "./Vendor/MSFT/DeviceStatus/Antivirus",
                "./Vendor/MSFT/DeviceStatus/Firewall",
                "./Vendor/MSFT/DeviceStatus/DeviceGuard",
                "./Vendor/MSFT/DeviceStatus/Compliance/EncryptionCompliance",
            ],
            Category::Os => &[
                "./DevDetail/SwV",
                "./Vendor/MSFT/DeviceStatus/OS/Edition",
                "./Vendor/MSFT/DeviceStatus/OS/Mode",
            ],
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown category '{0}' (expected one of hardware, applications, certificates, network, security, os)"
)]
pub struct UnknownCategory(pub String);

impl FromStr for Category {
    type Err = UnknownCategory;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|category| category.as_str() == s)
            .ok_or_else(|| UnknownCategory(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_category_round_trips_through_its_name_and_has_paths() {
        for category in Category::ALL {
            assert_eq!(category.as_str().parse::<Category>(), Ok(category));
            assert_eq!(
                serde_json::to_string(&category).unwrap_or_default(),
                format!("\"{category}\"")
            );
            assert!(!category.oma_dm_paths().is_empty());
        }
    }

    #[test]
    fn names_are_case_sensitive_and_unknown_ones_say_what_is_allowed() {
        let err = "Hardware".parse::<Category>().unwrap_err();
        assert!(err.to_string().contains("unknown category 'Hardware'"));
        assert!(err.to_string().contains("applications"));
    }
}

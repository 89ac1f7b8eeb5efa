//! The inventory categories a caller may ask a device to re-report, and the one table that maps
//! each to the OMA-DM nodes a device re-reads for it (`../shared/spec/OMA-DM-NODES.md`).

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

    /// What a device is asked, in order, to refresh this category: the only copy of the table
    /// in `../shared/spec/OMA-DM-NODES.md`. Leaves, or interior nodes with `?list=StructData`
    /// (a plain `Get` of an interior node returns only its children's names).
    pub fn reads(self) -> &'static [Read] {
        use Read::{Get, Replace};
        match self {
            Category::Hardware => &[
                Get("./DevInfo/DevId"),
                Get("./DevInfo/Man"),
                Get("./DevInfo/Mod"),
                Get("./DevInfo/DmV"),
                Get("./DevInfo/Lang"),
                Get("./DevDetail/DevTyp"),
                Get("./DevDetail/OEM"),
                Get("./DevDetail/FwV"),
                Get("./DevDetail/HwV"),
                Get("./DevDetail/Ext/Microsoft/SMBIOSSerialNumber"),
                Get("./DevDetail/Ext/Microsoft/ProcessorArchitecture"),
                Get("./DevDetail/Ext/Microsoft/ProcessorType"),
                Get("./DevDetail/Ext/Microsoft/TotalRAM"),
                Get("./DevDetail/Ext/Microsoft/DeviceName"),
                Get("./DevDetail/Ext/Microsoft/DNSComputerName"),
                Get("./DevDetail/Ext/Microsoft/Resolution"),
                Get("./Vendor/MSFT/DeviceStatus/Battery/Status"),
                Get("./Vendor/MSFT/DeviceStatus/Battery/EstimatedChargeRemaining"),
                Get("./Vendor/MSFT/DeviceStatus/Battery/EstimatedRuntime"),
            ],
            Category::Os => &[
                Get("./DevDetail/SwV"),
                Get("./DevDetail/Ext/Microsoft/OSPlatform"),
                Get("./DevDetail/Ext/Microsoft/LocalTime"),
                Get("./Vendor/MSFT/DeviceStatus/OS/Edition"),
                Get("./Vendor/MSFT/DeviceStatus/OS/Mode"),
                Get("./Vendor/MSFT/WindowsLicensing/Edition"),
            ],
            Category::Network => &[
                Get("./Vendor/MSFT/DeviceStatus/NetworkIdentifiers?list=StructData"),
                Get("./Vendor/MSFT/DeviceStatus/DomainName"),
                Get("./Vendor/MSFT/DeviceStatus/CellularIdentities?list=StructData"),
                Get("./DevDetail/Ext/WLANMACAddress"),
                Get("./DevDetail/Ext/WlanIPv4Address"),
                Get("./DevDetail/Ext/WlanIPv6Address"),
                Get("./DevDetail/Ext/WlanDnsSuffix"),
                Get("./DevDetail/Ext/WlanSubnetMask"),
            ],
            Category::Security => &[
                Get("./Vendor/MSFT/DeviceStatus/SecureBootState"),
                Get("./Vendor/MSFT/DeviceStatus/TPM/SpecificationVersion"),
                Get("./Vendor/MSFT/DeviceStatus/Antivirus/SignatureStatus"),
                Get("./Vendor/MSFT/DeviceStatus/Antivirus/Status"),
                Get("./Vendor/MSFT/DeviceStatus/Antispyware/SignatureStatus"),
                Get("./Vendor/MSFT/DeviceStatus/Antispyware/Status"),
                Get("./Vendor/MSFT/DeviceStatus/Firewall/Status"),
                Get("./Vendor/MSFT/DeviceStatus/UAC/Status"),
                Get("./Vendor/MSFT/DeviceStatus/DeviceGuard/VirtualizationBasedSecurityStatus"),
                Get("./Vendor/MSFT/DeviceStatus/Compliance/EncryptionCompliance"),
                Get("./Device/Vendor/MSFT/BitLocker/Status/DeviceEncryptionStatus"),
                Get("./Vendor/MSFT/Defender/Health/ProductStatus"),
                Get("./Vendor/MSFT/Defender/Health/ComputerState"),
                Get("./Vendor/MSFT/Defender/Health/RtpEnabled"),
                Get("./Vendor/MSFT/Defender/Health/SignatureOutOfDate"),
                Get("./Vendor/MSFT/Defender/Health/TamperProtectionEnabled"),
            ],
            Category::Applications => &[
                // Two steps: the query is written, then its results read.
                Replace {
                    uri: "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement/AppInventoryQuery",
                    data: r#"<Inventory Output="PackageDetails"/>"#,
                },
                Get(
                    "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement/AppInventoryResults",
                ),
                Get("./Device/Vendor/MSFT/EnterpriseDesktopAppManagement/MSI?list=StructData"),
                Get("./Vendor/MSFT/Win32AppInventory/Win32InstalledProgram?list=StructData"),
            ],
            Category::Certificates => &[
                Get("./Vendor/MSFT/CertificateStore/Root/System?list=StructData"),
                Get("./Vendor/MSFT/CertificateStore/CA/System?list=StructData"),
                Get("./Vendor/MSFT/CertificateStore/My/User?list=StructData"),
                Get("./Vendor/MSFT/CertificateStore/My/System?list=StructData"),
            ],
        }
    }

    /// The nodes whose values a report of this category carries: every `Get` of [`reads`].
    ///
    /// [`reads`]: Category::reads
    pub fn nodes(self) -> impl Iterator<Item = &'static str> {
        self.reads().iter().filter_map(|read| match read {
            Read::Get(uri) => Some(*uri),
            Read::Replace { .. } => None,
        })
    }
}

/// One OMA-DM command a refresh of a category sends the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Read a node's value.
    Get(&'static str),
    /// Write `data` (format `xml`) to a node first: application inventory is a query, then
    /// its results.
    Replace {
        uri: &'static str,
        data: &'static str,
    },
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
            assert!(category.nodes().next().is_some());
        }
    }

    #[test]
    fn every_node_is_a_leaf_or_asks_for_its_subtree() {
        // `./DevDetail` and `./DevInfo` are interior nodes: a `Get` of one returns only the
        // names of its children, never a value.
        for category in Category::ALL {
            for uri in category.nodes() {
                assert!(uri.starts_with("./"), "{uri}");
                assert!(
                    !["./DevDetail", "./DevInfo", "./DevDetail/Ext/Microsoft"].contains(&uri),
                    "{uri} is an interior node"
                );
            }
        }
        let apps: Vec<&str> = Category::Applications.nodes().collect();
        assert!(
            apps[0].ends_with("/AppManagement/AppInventoryResults"),
            "{apps:?}"
        );
        assert!(matches!(
            Category::Applications.reads()[0],
            Read::Replace { uri, .. } if uri.ends_with("/AppManagement/AppInventoryQuery")
        ));
    }

    #[test]
    fn names_are_case_sensitive_and_unknown_ones_say_what_is_allowed() {
        let err = "Hardware".parse::<Category>().unwrap_err();
        assert!(err.to_string().contains("unknown category 'Hardware'"));
        assert!(err.to_string().contains("applications"));
    }
}

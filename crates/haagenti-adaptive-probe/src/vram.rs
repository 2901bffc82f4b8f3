//! Video memory as the OS reports it. wgpu exposes no VRAM size, so this is the only source
//! besides the user.

use std::path::Path;

/// One GPU's memory as the Linux DRM sysfs tree reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DrmVram {
    /// PCI vendor id.
    pub(crate) vendor: u32,
    /// PCI device id.
    pub(crate) device: u32,
    /// `mem_info_vram_total`, in MiB.
    pub(crate) vram_mb: u64,
}

/// Every `card<N>` under `root` (normally `/sys/class/drm`) whose driver reports
/// `device/mem_info_vram_total` (amdgpu does; the NVIDIA and Intel drivers do not). Unreadable
/// entries are skipped; a missing `root` gives an empty list.
pub(crate) fn drm_vram(root: &Path) -> Vec<DrmVram> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<DrmVram> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name();
            let digits = name.to_str()?.strip_prefix("card")?;
            // `card0-DP-1` and the like are connectors, not devices.
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let dev = entry.path().join("device");
            let read = |file: &str| std::fs::read_to_string(dev.join(file)).ok();
            let bytes: u64 = read("mem_info_vram_total")?.trim().parse().ok()?;
            Some(DrmVram {
                vendor: parse_hex_id(&read("vendor")?)?,
                device: parse_hex_id(&read("device")?)?,
                vram_mb: bytes / (1024 * 1024),
            })
        })
        .collect();
    found.sort_by_key(|v| (v.vendor, v.device, v.vram_mb));
    found
}

/// A sysfs id such as `0x1002\n`.
fn parse_hex_id(text: &str) -> Option<u32> {
    let t = text.trim();
    let hex = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X"))?;
    u32::from_str_radix(hex, 16).ok()
}

/// The VRAM of the adapter with PCI ids `vendor`/`device`, if the cards that match all report
/// the same size: two identical cards with different sizes would make any answer a guess. Ids
/// above 16 bits (Vulkan's Khronos vendor ids, such as Mesa's 0x10005) are not PCI ids and match
/// nothing.
pub(crate) fn match_vram(cards: &[DrmVram], vendor: u32, device: u32) -> Option<u64> {
    let mut sizes = cards
        .iter()
        .filter(|c| vendor <= 0xffff && c.vendor == vendor && c.device == device)
        .map(|c| c.vram_mb);
    let first = sizes.next()?;
    sizes.all(|s| s == first).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(root: &Path, name: &str, vendor: &str, device: &str, vram: Option<&str>) {
        let dev = root.join(name).join("device");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vendor"), vendor).unwrap();
        std::fs::write(dev.join("device"), device).unwrap();
        if let Some(v) = vram {
            std::fs::write(dev.join("mem_info_vram_total"), v).unwrap();
        }
    }

    #[test]
    fn reads_amdgpu_cards_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        card(root, "card0", "0x1002\n", "0x73bf\n", Some("17163091968\n"));
        card(root, "card1", "0x10de\n", "0x2684\n", None); // NVIDIA: no VRAM file
        card(root, "card0-DP-1", "0x1002\n", "0x73bf\n", Some("1\n")); // a connector
        card(root, "renderD128", "0x1002\n", "0x73bf\n", Some("1\n"));
        card(root, "card2", "garbage", "0x1234", Some("1024\n"));
        let cards = drm_vram(root);
        assert_eq!(
            cards,
            vec![DrmVram {
                vendor: 0x1002,
                device: 0x73bf,
                vram_mb: 16368
            }]
        );
        assert_eq!(match_vram(&cards, 0x1002, 0x73bf), Some(16368));
        assert_eq!(match_vram(&cards, 0x10de, 0x2684), None);
        assert!(drm_vram(&root.join("missing")).is_empty());
    }

    #[test]
    fn ambiguous_matches_give_nothing() {
        let a = DrmVram {
            vendor: 0x1002,
            device: 1,
            vram_mb: 8192,
        };
        let b = DrmVram {
            vram_mb: 16384,
            ..a
        };
        assert_eq!(match_vram(&[a, a], 0x1002, 1), Some(8192));
        assert_eq!(match_vram(&[a, b], 0x1002, 1), None);
        // A Khronos vendor id is not a PCI id, whatever its low bits.
        assert_eq!(match_vram(&[a], 0x1_1002, 1), None);
    }
}

//! `/proc/self/mountinfo`, parsed once, in one place (proc(5)):
//! `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.

use std::path::PathBuf;

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// `major:minor` of the mounted filesystem (its bdi name under /sys/class/bdi).
    pub(crate) device: String,
    pub(crate) mountpoint: PathBuf,
    pub(crate) fstype: String,
    pub(crate) source: String,
}

impl MountEntry {
    pub(crate) fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype.starts_with("fuse.")
    }

    /// An mlxk-fs mount: its subtype (`fuse.mlxk-fs`), or plain `fuse` with its fsname.
    pub(crate) fn is_mlxk(&self) -> bool {
        self.fstype == "fuse.mlxk-fs" || (self.fstype == "fuse" && self.source == "mlxk-fs")
    }
}

/// This process's mount table, in the kernel's order (parents before children); empty when
/// it cannot be read.
pub(crate) fn read() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse(&text))
        .unwrap_or_default()
}

fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    Some(MountEntry {
        device: fields.get(2)?.to_string(),
        mountpoint: PathBuf::from(unescape(fields.get(4)?)),
        fstype: fields.get(sep + 1)?.to_string(),
        source: unescape(fields.get(sep + 2)?),
    })
}

/// The kernel escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_optional_fields_escapes_and_fuse_mounts() {
        let text = "\
36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 36 0:52 / /home/u/my\\040mlx rw,nosuid,nodev,noatime - fuse.mlxk-fs mlxk-fs rw,user_id=0
41 36 0:53 / /tmp/other rw shared:7 - fuse mlxk-fs rw
42 36 0:54 / /tmp/sshfs rw - fuse.sshfs host:/ rw
garbage line
";
        let t = parse(text);
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].device, "98:0");
        assert_eq!(t[0].mountpoint, PathBuf::from("/mnt2"));
        assert_eq!(t[0].fstype, "ext3");
        assert!(!t[0].is_fuse());
        assert_eq!(t[1].mountpoint, PathBuf::from("/home/u/my mlx"));
        assert!(t[1].is_fuse() && t[1].is_mlxk());
        assert!(t[2].is_fuse() && t[2].is_mlxk());
        assert!(t[3].is_fuse() && !t[3].is_mlxk());
    }
}

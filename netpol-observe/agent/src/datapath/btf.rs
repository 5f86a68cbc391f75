//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) for the drop tracepoint: byte
//! offsets of `struct` members (through anonymous struct/union members, and along dotted
//! paths of embedded members) and the values of an `enum`. aya-obj parses BTF too but keeps
//! members and strings private, so this reads the (small, stable) format directly: a header, a
//! type section and a string section.

use std::{borrow::Cow, collections::HashMap, path::Path};

/// The path of the running kernel's BTF.
pub(crate) const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Errors reading BTF; each names the file and what is missing.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file cannot be read (no BTF: a kernel without `CONFIG_DEBUG_INFO_BTF`).
    #[error(
        "cannot read the kernel BTF {path} (the kernel needs CONFIG_DEBUG_INFO_BTF=y; run the \
         agent with --drops=false to skip drop tracing)"
    )]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data is not BTF or is truncated.
    #[error("{path} is not valid BTF: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A type or member the agent needs is not in the BTF.
    #[error("{path}: {what} not found in the kernel BTF")]
    Missing {
        /// The file.
        path: String,
        /// What was looked for (`struct sk_buff member head`).
        what: String,
    },
}

#[derive(Debug, Clone, Copy)]
struct TypeRef {
    kind: u32,
    name_off: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    /// Offset of the kind-specific data in `types`.
    extra: usize,
}

/// A parsed BTF blob.
#[derive(Debug)]
pub struct Btf {
    origin: String,
    types_data: Vec<u8>,
    strings: Vec<u8>,
    /// Index = type id (0 is `void`).
    types: Vec<TypeRef>,
    by_name: HashMap<(u32, String), u32>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub(crate) fn from_sys_fs() -> Result<Btf, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// Reads a BTF file.
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data, &path.display().to_string())
    }

    /// Parses little-endian BTF (`origin` names it in errors).
    pub fn parse(data: &[u8], origin: &str) -> Result<Btf, BtfError> {
        let bad = |m: &str| BtfError::Format {
            path: origin.to_owned(),
            message: m.to_owned(),
        };
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err(bad("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4).ok_or_else(|| bad("short header"))? as usize;
        let field = |i: usize| u32_at(data, 8 + 4 * i).map(|v| v as usize);
        let (Some(type_off), Some(type_len), Some(str_off), Some(str_len)) =
            (field(0), field(1), field(2), field(3))
        else {
            return Err(bad("short header"));
        };
        let types_data = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| bad("type section out of bounds"))?
            .to_vec();
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| bad("string section out of bounds"))?
            .to_vec();
        let mut btf = Btf {
            origin: origin.to_owned(),
            types_data,
            strings,
            types: vec![TypeRef {
                kind: 0,
                name_off: 0,
                vlen: 0,
                kind_flag: false,
                size_or_type: 0,
                extra: 0,
            }],
            by_name: HashMap::new(),
        };
        let mut off = 0;
        let d = &btf.types_data;
        while off + 12 <= d.len() {
            let (Some(name_off), Some(info), Some(size_or_type)) =
                (u32_at(d, off), u32_at(d, off + 4), u32_at(d, off + 8))
            else {
                break;
            };
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let extra = off + 12;
            let extra_len = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                0..=19 => 0,
                other => return Err(bad(&format!("unknown BTF kind {other} at offset {off}"))),
            };
            btf.types.push(TypeRef {
                kind,
                name_off,
                vlen,
                kind_flag: info >> 31 == 1,
                size_or_type,
                extra,
            });
            off = extra + extra_len;
        }
        if off != btf.types_data.len() {
            return Err(bad("type section truncated"));
        }
        for (id, t) in btf.types.iter().enumerate().skip(1) {
            if matches!(t.kind, KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64)
                && t.name_off != 0
            {
                let name = btf.string(t.name_off).into_owned();
                btf.by_name.entry((t.kind, name)).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> Cow<'_, str> {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|b| *b == 0).unwrap_or(s.len());
        String::from_utf8_lossy(&s[..end])
    }

    fn missing(&self, what: String) -> BtfError {
        BtfError::Missing {
            path: self.origin.clone(),
            what,
        }
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&TypeRef> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// The byte offset and type of `member` in the struct/union `t`, looking into anonymous
    /// struct/union members (at any depth, e.g. `sk_buff.dev`).
    fn find_member(&self, t: &TypeRef, member: &str, depth: usize) -> Option<(u32, u32)> {
        if depth > 8 || !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for i in 0..t.vlen {
            let m = t.extra + 12 * i;
            let (name_off, ty, raw) = (
                u32_at(&self.types_data, m)?,
                u32_at(&self.types_data, m + 4)?,
                u32_at(&self.types_data, m + 8)?,
            );
            let bits = if t.kind_flag { raw & 0x00ff_ffff } else { raw };
            if name_off == 0 {
                if let Some(inner) = self.resolve(ty)
                    && let Some((o, found)) = self.find_member(inner, member, depth + 1)
                {
                    return Some((bits / 8 + o, found));
                }
            } else if self.string(name_off) == member {
                return Some((bits / 8, ty));
            }
        }
        None
    }

    /// The byte offset of `member` in `struct name`, looking into anonymous members. `member`
    /// may be a dotted path through embedded (not pointed-to) structs, unions and typedefs of
    /// them: `ns.inum` in `net` is `offsetof(struct net, ns) + offsetof(struct ns_common,
    /// inum)`, `nd_net.net` in `net_device` goes through the typedef `possible_net_t`.
    pub(crate) fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = self
            .by_name
            .get(&(KIND_STRUCT, name.to_owned()))
            .ok_or_else(|| self.missing(format!("struct {name}")))?;
        let mut t = self.types[*id as usize];
        let mut offset = 0u32;
        let mut steps = member.split('.').peekable();
        let mut path = String::new();
        while let Some(step) = steps.next() {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(step);
            let (o, ty) = self
                .find_member(&t, step, 0)
                .ok_or_else(|| self.missing(format!("struct {name} member {path}")))?;
            offset += o;
            if steps.peek().is_some() {
                t = *self
                    .resolve(ty)
                    .filter(|inner| matches!(inner.kind, KIND_STRUCT | KIND_UNION))
                    .ok_or_else(|| {
                        self.missing(format!(
                            "struct {name} member {path} as an embedded struct or union"
                        ))
                    })?;
            }
        }
        Ok(offset)
    }

    /// The `(name, value)` pairs of `enum name`.
    pub(crate) fn enum_values(&self, name: &str) -> Result<Vec<(String, u64)>, BtfError> {
        let (id, wide) = match self.by_name.get(&(KIND_ENUM, name.to_owned())) {
            Some(id) => (*id, false),
            None => (
                *self
                    .by_name
                    .get(&(KIND_ENUM64, name.to_owned()))
                    .ok_or_else(|| self.missing(format!("enum {name}")))?,
                true,
            ),
        };
        let t = self.types[id as usize];
        let step = if wide { 12 } else { 8 };
        let mut out = Vec::with_capacity(t.vlen);
        for i in 0..t.vlen {
            let m = t.extra + step * i;
            let name_off = u32_at(&self.types_data, m);
            let lo = u32_at(&self.types_data, m + 4);
            let hi = if wide {
                u32_at(&self.types_data, m + 8)
            } else {
                Some(0)
            };
            if let (Some(n), Some(lo), Some(hi)) = (name_off, lo, hi) {
                out.push((
                    self.string(n).into_owned(),
                    u64::from(lo) | (u64::from(hi) << 32),
                ));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_clear_error() {
        let err = Btf::parse(b"not btf at all, definitely not", "x.btf").unwrap_err();
        assert!(err.to_string().contains("x.btf is not valid BTF"), "{err}");
        let err = Btf::from_file(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    }

    #[test]
    fn running_kernel_sk_buff_and_drop_reasons() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("SKIPPED: no {VMLINUX_BTF}");
            return;
        };
        let head = btf.member_offset("sk_buff", "head").unwrap();
        let nh = btf.member_offset("sk_buff", "network_header").unwrap();
        let len = btf.member_offset("sk_buff", "len").unwrap();
        assert!(head > 0 && nh > 0 && len > 0 && head != nh);
        let reasons = btf.enum_values("skb_drop_reason").unwrap();
        assert!(
            reasons
                .iter()
                .any(|(n, _)| n == "SKB_DROP_REASON_NETFILTER_DROP")
        );
        assert!(btf.member_offset("sk_buff", "no_such_member").is_err());
    }

    /// The paths the drop tracepoint's namespace filter reads: `sk_buff.dev` (inside
    /// anonymous unions and structs), `net_device.nd_net.net` (through the typedef
    /// `possible_net_t`) and `net.ns.inum` (an embedded `struct ns_common`), checked against
    /// the running kernel's layout as `bpftool btf dump` shows it.
    #[test]
    fn running_kernel_netns_paths() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("SKIPPED: no {VMLINUX_BTF}");
            return;
        };
        // `dev` shares its union with `dev_scratch`, after `next` and `prev` (two pointers)
        // in an anonymous struct of an anonymous union, on every kernel with BTF.
        assert_eq!(btf.member_offset("sk_buff", "dev").unwrap(), 16);
        assert_eq!(
            btf.member_offset("sk_buff", "dev").unwrap(),
            btf.member_offset("sk_buff", "dev_scratch").unwrap()
        );
        let nd_net = btf.member_offset("net_device", "nd_net").unwrap();
        // `net` is the only member of `possible_net_t`.
        assert_eq!(
            btf.member_offset("net_device", "nd_net.net").unwrap(),
            nd_net
        );
        let ns = btf.member_offset("net", "ns").unwrap();
        let inum = btf.member_offset("ns_common", "inum").unwrap();
        assert_eq!(btf.member_offset("net", "ns.inum").unwrap(), ns + inum);
        assert!(ns > 0 && inum > 0);
        // Errors name the path; a pointer is not followed.
        let err = btf
            .member_offset("net", "ns.no_such")
            .unwrap_err()
            .to_string();
        assert!(err.contains("struct net member ns.no_such"), "{err}");
        let err = btf
            .member_offset("sk_buff", "dev.nd_net")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dev as an embedded struct or union"), "{err}");
    }
}

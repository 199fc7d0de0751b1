//! A small reader of the kernel's BTF (/sys/kernel/btf/vmlinux), enough to find the offsets
//! of struct fields on the running kernel.
//!
//! Why: eBPF programs written in Rust cannot use CO-RE field relocations, and the layout of
//! `struct file`, `inode`, `dentry`... differs between kernels (Debian's 6.1 and this host's
//! 6.18 already disagree). The agent reads the offsets here and hands them to the programs as
//! read-only globals before loading; the programs read kernel memory with those offsets.

use std::{collections::HashMap, fs, io, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("struct {0} is not in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no field {field}")]
    NoField { strukt: String, field: String },
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    /// Bit offset within the containing struct or union.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// Struct or union.
    Composite {
        members: Vec<Member>,
    },
    /// typedef, const, volatile, restrict, type tag: refers to another type.
    Alias(u32),
    Other,
}

/// The parsed type table.
pub struct Btf {
    types: Vec<Type>,
    structs: HashMap<String, u32>,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Btf::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = fs::read(path).map_err(|source| BtfError::Read { path: path.display().to_string(), source })?;
        Btf::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| data.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if u16_at(0) != Some(0xeb9f) {
            return Err(BtfError::Malformed("bad magic (or not little-endian)"));
        }
        let hdr_len = u32_at(4).ok_or(BtfError::Malformed("short header"))? as usize;
        let type_off = u32_at(8).ok_or(BtfError::Malformed("short header"))? as usize;
        let type_len = u32_at(12).ok_or(BtfError::Malformed("short header"))? as usize;
        let str_off = u32_at(16).ok_or(BtfError::Malformed("short header"))? as usize;
        let str_len = u32_at(20).ok_or(BtfError::Malformed("short header"))? as usize;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?;
        let name = |off: u32| -> String {
            let s = strings.get(off as usize..).unwrap_or_default();
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };
        let start = hdr_len + type_off;
        let end = start + type_len;
        if data.len() < end {
            return Err(BtfError::Malformed("type section out of bounds"));
        }
        // Type id 0 is void.
        let mut types = vec![Type::Other];
        let mut structs = HashMap::new();
        let mut o = start;
        while o < end {
            let name_off = u32_at(o).ok_or(BtfError::Malformed("truncated type"))?;
            let info = u32_at(o + 4).ok_or(BtfError::Malformed("truncated type"))?;
            let size_or_type = u32_at(o + 8).ok_or(BtfError::Malformed("truncated type"))?;
            o += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = o + i * 12;
                        let m_name = u32_at(m).ok_or(BtfError::Malformed("truncated member"))?;
                        let m_type = u32_at(m + 4).ok_or(BtfError::Malformed("truncated member"))?;
                        let m_off = u32_at(m + 8).ok_or(BtfError::Malformed("truncated member"))?;
                        let bit_offset = if kind_flag { m_off & 0x00ff_ffff } else { m_off };
                        members.push(Member { name: name(m_name), type_id: m_type, bit_offset });
                    }
                    o += vlen * 12;
                    let n = name(name_off);
                    if kind == KIND_STRUCT && !n.is_empty() {
                        structs.entry(n).or_insert(types.len() as u32);
                    }
                    Type::Composite { members }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => Type::Alias(size_or_type),
                other => {
                    o += trailing_len(other, vlen).ok_or(BtfError::Malformed("unknown type kind"))?;
                    Type::Other
                }
            };
            types.push(ty);
        }
        Ok(Btf { types, structs })
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Alias(next) => id = *next,
                t => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `path` (a field, then fields of that field...) inside `struct strukt`.
    /// Fields inside anonymous structs and unions are found as C finds them.
    pub fn offset_of(&self, strukt: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut id = *self.structs.get(strukt).ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut bits = 0;
        for field in path {
            let (member_bits, member_type) = self
                .find_member(id, field)
                .ok_or_else(|| BtfError::NoField { strukt: strukt.to_owned(), field: path.join(".") })?;
            bits += member_bits;
            id = member_type;
        }
        if bits % 8 != 0 {
            return Err(BtfError::NoField {
                strukt: strukt.to_owned(),
                field: format!("{} (bit field)", path.join(".")),
            });
        }
        Ok(bits / 8)
    }

    /// (bit offset, type id) of member `name` of composite `id`, looking into anonymous members.
    fn find_member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let Type::Composite { members, .. } = self.resolve(id)? else { return None };
        for m in members {
            if m.name == name {
                return Some((m.bit_offset, m.type_id));
            }
        }
        for m in members.iter().filter(|m| m.name.is_empty()) {
            if let Some((bits, ty)) = self.find_member(m.type_id, name) {
                return Some((m.bit_offset + bits, ty));
            }
        }
        None
    }
}

/// Bytes after the common 12-byte header for kinds other than struct/union/aliases.
fn trailing_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        1 => 4,          // INT
        2 => 0,          // PTR
        3 => 12,         // ARRAY
        6 => vlen * 8,   // ENUM
        7 => 0,          // FWD
        12 => 0,         // FUNC
        13 => vlen * 8,  // FUNC_PROTO
        14 => 4,         // VAR
        15 => vlen * 12, // DATASEC
        16 => 0,         // FLOAT
        17 => 4,         // DECL_TAG
        19 => vlen * 12, // ENUM64
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `struct inner { int a; union { int b; long c; }; }` and
    /// `struct outer { long x; struct inner in; }` (with an int type).
    fn blob() -> Vec<u8> {
        let mut strings = b"\0int\0inner\0a\0b\0c\0outer\0x\0in\0".to_vec();
        let s = |n: &str, strings: &Vec<u8>| -> u32 {
            let needle = format!("\0{n}\0");
            strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() as u32 + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[s("int", &strings), 1 << 24, 4, 32]);
        // 2: anonymous union { int b; int c; }
        push(&[0, (5 << 24) | 2, 8, s("b", &strings), 1, 0, s("c", &strings), 1, 0]);
        // 3: struct inner { int a; <anon union> at bit 64 }
        push(&[s("inner", &strings), (4 << 24) | 2, 16, s("a", &strings), 1, 0, 0, 2, 64]);
        // 4: const struct inner
        push(&[0, 10 << 24, 3]);
        // 5: struct outer { int x; const struct inner in at bit 64 }
        push(&[s("outer", &strings), (4 << 24) | 2, 24, s("x", &strings), 1, 0, s("in", &strings), 4, 64]);
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.push(1);
        out.push(0);
        for w in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.append(&mut strings);
        out
    }

    #[test]
    fn finds_nested_and_anonymous_fields() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.offset_of("outer", &["x"]).unwrap(), 0);
        assert_eq!(btf.offset_of("outer", &["in"]).unwrap(), 8);
        assert_eq!(btf.offset_of("outer", &["in", "a"]).unwrap(), 8);
        assert_eq!(btf.offset_of("outer", &["in", "c"]).unwrap(), 16, "through const and an anonymous union");
        assert_eq!(btf.offset_of("inner", &["b"]).unwrap(), 8);
    }

    #[test]
    fn names_what_is_missing() {
        let btf = Btf::parse(&blob()).unwrap();
        assert!(matches!(btf.offset_of("nope", &["x"]), Err(BtfError::NoStruct(_))));
        let e = btf.offset_of("outer", &["in", "zz"]).unwrap_err().to_string();
        assert_eq!(e, "struct outer has no field in.zz");
        assert!(Btf::parse(b"\x00\x01junk").is_err());
        assert!(Btf::parse(&blob()[..30]).is_err());
    }

    #[test]
    fn reads_this_kernels_btf() {
        // Every machine of this project has BTF (see the README's requirements).
        let btf = Btf::from_sys_fs().expect("the kernel's BTF");
        // Fields fence relies on; their offsets vary by kernel but must exist.
        for (s, f) in [
            ("file", &["f_inode"][..]),
            ("file", &["f_path", "dentry"]),
            ("inode", &["i_ino"]),
            ("inode", &["i_sb"]),
            ("inode", &["i_nlink"]),
            ("super_block", &["s_dev"]),
            ("dentry", &["d_parent"]),
            ("dentry", &["d_name", "name"]),
            ("linux_binprm", &["file"]),
            ("task_struct", &["mm"]),
            ("mm_struct", &["exe_file"]),
        ] {
            btf.offset_of(s, f).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(
            btf.offset_of("dentry", &["d_name"]).unwrap() + 8,
            btf.offset_of("dentry", &["d_name", "name"]).unwrap()
        );
    }
}

//! Tracepoint record layouts from tracefs `format` files.
//!
//! Layouts change between kernels (sched_process_fork moved its pids in 6.x), so the
//! loader reads the format of every tracepoint it attaches: syscall tracepoints must
//! have the layout the programs read (8-byte args from offset 16, `ret` at 16), and
//! the io_uring field offsets are passed to the programs.

use std::path::{Path, PathBuf};

use monitor_common::TpOffsets;

#[derive(Debug, thiserror::Error)]
pub enum TraceFsError {
    #[error("tracefs is not mounted (no {0}/events); mount it: mount -t tracefs nodev /sys/kernel/tracing")]
    NotMounted(String),
    #[error("tracepoint {0} does not exist on this kernel ({1})")]
    Missing(String, String),
    #[error("tracepoint {tp}: {msg}")]
    Layout { tp: String, msg: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Format {
    pub fields: Vec<Field>,
}

impl Format {
    /// Parses the text of a `format` file.
    pub fn parse(text: &str) -> Format {
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else { continue };
            let mut decl = "";
            let mut offset = None;
            let mut size = None;
            for part in rest.split(';').map(str::trim) {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                } else if decl.is_empty() && !part.is_empty() {
                    decl = part;
                }
            }
            // The name is the last identifier of the declaration ("char comm[16]" -> comm).
            let name = decl
                .split(|c: char| c.is_whitespace() || c == '*')
                .rfind(|s| !s.is_empty())
                .map(|s| s.split('[').next().unwrap_or(s).to_string());
            if let (Some(name), Some(offset), Some(size)) = (name, offset, size) {
                fields.push(Field { name, offset, size });
            }
        }
        Format { fields }
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Fields after the common ones.
    fn own(&self) -> impl Iterator<Item = &Field> {
        self.fields.iter().filter(|f| !f.name.starts_with("common_"))
    }
}

pub struct TraceFs {
    root: PathBuf,
}

impl TraceFs {
    /// Finds mounted tracefs.
    pub fn open() -> Result<Self, TraceFsError> {
        for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
            if Path::new(root).join("events").is_dir() {
                return Ok(Self { root: root.into() });
            }
        }
        Err(TraceFsError::NotMounted("/sys/kernel/tracing".into()))
    }

    pub fn format(&self, category: &str, name: &str) -> Result<Format, TraceFsError> {
        let p = self.root.join("events").join(category).join(name).join("format");
        let text = std::fs::read_to_string(&p)
            .map_err(|e| TraceFsError::Missing(format!("{category}:{name}"), e.to_string()))?;
        Ok(Format::parse(&text))
    }

    /// Checks that a syscall tracepoint has the layout the programs read: for
    /// sys_enter, every argument 8 bytes wide from offset 16 in order; for
    /// sys_exit, `ret` at 16.
    pub fn check_syscall(&self, name: &str) -> Result<(), TraceFsError> {
        let fmt = self.format("syscalls", name)?;
        let bad = |msg: String| TraceFsError::Layout { tp: format!("syscalls:{name}"), msg };
        match fmt.field("__syscall_nr") {
            Some(f) if f.offset == 8 => {}
            _ => return Err(bad("no __syscall_nr at offset 8".into())),
        }
        if name.starts_with("sys_exit_") {
            match fmt.field("ret") {
                Some(f) if f.offset == 16 && f.size == 8 => Ok(()),
                other => Err(bad(format!("expected `long ret` at 16, found {other:?}"))),
            }
        } else {
            for (i, f) in fmt.own().filter(|f| f.name != "__syscall_nr").enumerate() {
                let want = 16 + 8 * i as u32;
                if f.offset != want || f.size != 8 {
                    return Err(bad(format!(
                        "argument {i} ({}) at offset {} size {}, expected {want} size 8",
                        f.name, f.offset, f.size
                    )));
                }
            }
            Ok(())
        }
    }

    /// Offsets of the io_uring tracepoint fields the programs read. The submit
    /// tracepoint is `io_uring_submit_req` (6.3+) or, before, `io_uring_submit_sqe`
    /// with 32-bit flags; a kernel without io_uring tracepoints has nothing to miss.
    pub fn tp_offsets(&self) -> Result<TpOffsets, TraceFsError> {
        let Ok(create) = self.format("io_uring", "io_uring_create") else { return Ok(TpOffsets::default()) };
        let (name, submit) = match self.format("io_uring", "io_uring_submit_req") {
            Ok(f) => ("io_uring_submit_req", f),
            Err(_) => ("io_uring_submit_sqe", self.format("io_uring", "io_uring_submit_sqe")?),
        };
        let get = |fmt: &Format, tp: &str, f: &str, size: u32| -> Result<u32, TraceFsError> {
            match fmt.field(f) {
                Some(x) if x.size == size => Ok(x.offset),
                other => Err(TraceFsError::Layout {
                    tp: format!("io_uring:{tp}"),
                    msg: format!("field {f} of size {size} expected, found {other:?}"),
                }),
            }
        };
        Ok(TpOffsets {
            iou_create_fd: get(&create, "io_uring_create", "fd", 4)?,
            iou_create_sq_entries: get(&create, "io_uring_create", "sq_entries", 4)?,
            iou_create_flags: get(&create, "io_uring_create", "flags", 4)?,
            iou_submit_opcode: get(&submit, name, "opcode", 1)?,
            iou_submit_flags: get(&submit, name, "flags", 8).or_else(|_| get(&submit, name, "flags", 4))?,
            iou_submit_flags_size: submit.field("flags").map_or(0, |f| f.size),
            iou_submit_sq_thread: get(&submit, name, "sq_thread", 1)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_6_18: &str = "name: sched_process_fork
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:24;\tsize:16;\tsigned:0;
\tfield:const char * filename;\toffset:40;\tsize:8;\tsigned:0;
";

    #[test]
    fn parses_names_offsets_and_sizes() {
        let f = Format::parse(FORK_6_18);
        assert_eq!(f.field("parent_pid"), Some(&Field { name: "parent_pid".into(), offset: 12, size: 4 }));
        assert_eq!(f.field("parent_comm").map(|x| x.offset), Some(8));
        assert_eq!(f.field("comm").map(|x| x.size), Some(16));
        assert_eq!(f.field("filename").map(|x| x.offset), Some(40));
        assert!(f.field("child_pid").is_none());
    }
}

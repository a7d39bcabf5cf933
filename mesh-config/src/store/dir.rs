//! Reading a configuration directory as the loader reads it: the same files (every
//! `*.yaml` / `*.yml` under it, hidden files skipped), the same limits (the size limit,
//! UTF-8), each file split into its documents and keeping its byte-order mark, so that a
//! plan computed against what was read can tell when a file changed since.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ConfigDir, Document, Found, StoreError, documents};
use crate::load::{ConfigSet, LoadError, MAX_FILE_SIZE, yaml_files};
use crate::model::ResourceKey;
use crate::snapshot::Checked;
use crate::source::SourceFile;

/// Reads a configuration file as the loader does (size limit, UTF-8), named by its path.
pub fn read_source(path: &Path) -> Result<Arc<SourceFile>, LoadError> {
    let text = read_text(path)?;
    Ok(SourceFile::new(path.display().to_string(), text))
}

fn read_text(path: &Path) -> Result<String, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_FILE_SIZE {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    String::from_utf8(bytes).map_err(|_| LoadError::NotText {
        path: path.to_path_buf(),
    })
}

pub(super) const BOM: &str = "\u{feff}";

/// One file of a [`ConfigDir`].
#[derive(Debug, Clone)]
pub(super) struct DirFile {
    pub(super) path: PathBuf,
    /// The name the loader gives the file (its path, displayed).
    pub(super) name: String,
    /// The text, without its byte-order mark.
    pub(super) text: String,
    /// The file starts with a byte-order mark (kept when the file is rewritten).
    pub(super) bom: bool,
    pub(super) docs: Vec<Document>,
}

impl DirFile {
    fn new(path: PathBuf, raw: String) -> Self {
        let (bom, text) = match raw.strip_prefix(BOM) {
            Some(rest) => (true, rest.to_string()),
            None => (false, raw),
        };
        let docs = documents(&text);
        DirFile {
            name: path.display().to_string(),
            path,
            text,
            bom,
            docs,
        }
    }

    pub(super) fn raw(&self) -> String {
        if self.bom {
            format!("{BOM}{}", self.text)
        } else {
            self.text.clone()
        }
    }
}

impl ConfigDir {
    /// Reads the directory at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = path.as_ref().to_path_buf();
        let meta = std::fs::metadata(&root).map_err(|source| LoadError::Io {
            path: root.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(StoreError::NotADirectory { path: root });
        }
        let mut files = Vec::new();
        for path in yaml_files(&root)? {
            let raw = read_text(&path)?;
            files.push(DirFile::new(path, raw));
        }
        Ok(ConfigDir { root, files })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The files read, in the loader's order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// The documents of file `path` (its text without a byte-order mark is
    /// [`ConfigDir::text`]), or `None` when the directory has no such file.
    pub fn documents(&self, path: &Path) -> Option<&[Document]> {
        self.file(path).map(|f| f.docs.as_slice())
    }

    /// The text of file `path` as read (without a byte-order mark).
    pub fn text(&self, path: &Path) -> Option<&str> {
        self.file(path).map(|f| f.text.as_str())
    }

    fn file(&self, path: &Path) -> Option<&DirFile> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Where the resource `key` is written: its file and the resource found there (the
    /// first, if the directory defines it twice).
    pub fn find(&self, key: &ResourceKey) -> Option<(&Path, &Found)> {
        self.files.iter().find_map(|f| {
            f.docs
                .iter()
                .flat_map(|d| &d.resources)
                .find(|r| &r.key == key)
                .map(|r| (f.path.as_path(), r))
        })
    }

    /// The directory as the loader reads it.
    pub fn config_set(&self) -> ConfigSet {
        let mut set = ConfigSet::new();
        for f in &self.files {
            set.add_source(SourceFile::new(f.name.clone(), f.text.clone()));
        }
        set
    }

    /// Checks the directory as it is.
    pub fn check(&self) -> Checked {
        self.config_set().check()
    }
}

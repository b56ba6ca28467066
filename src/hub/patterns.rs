//! `--include` / `--exclude`: the patterns `hf download` and `snapshot_download` take (Python's
//! `fnmatch`: `*` also matches `/`, case-sensitive; a pattern ending in `/` means everything
//! below that directory).

use glob::{MatchOptions, Pattern};

use super::HubError;

/// Which files of a repository to get: those matching any include pattern (all when there is
/// none) and no exclude pattern.
#[derive(Debug, Clone, Default)]
pub struct FileFilter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

const FNMATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: false,
    require_literal_leading_dot: false,
};

impl FileFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<FileFilter, HubError> {
        let compile = |patterns: &[String]| {
            patterns
                .iter()
                .map(|p| {
                    let p = if p.ends_with('/') {
                        format!("{p}*")
                    } else {
                        p.clone()
                    };
                    Pattern::new(&p).map_err(|e| HubError::Pattern {
                        pattern: p.clone(),
                        reason: e.msg.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(FileFilter {
            include: compile(include)?,
            exclude: compile(exclude)?,
        })
    }

    pub fn wants(&self, path: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches_with(path, FNMATCH)))
            && !self.exclude.iter().any(|p| p.matches_with(path, FNMATCH))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(inc: &[&str], exc: &[&str]) -> FileFilter {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        FileFilter::new(&v(inc), &v(exc)).unwrap()
    }

    #[test]
    fn fnmatch_semantics() {
        assert!(f(&[], &[]).wants("anything/at/all"));
        let json = f(&["*.json"], &[]);
        assert!(json.wants("config.json") && json.wants("sub/tokenizer.json"));
        assert!(!json.wants("model.safetensors"));
        let no_gguf = f(&[], &["*.gguf"]);
        assert!(no_gguf.wants("config.json") && !no_gguf.wants("q4/model.gguf"));
        let dir = f(&["tokenizer/"], &[]);
        assert!(dir.wants("tokenizer/vocab.json") && !dir.wants("config.json"));
        assert!(!f(&["*.JSON"], &[]).wants("config.json"), "case-sensitive");
        assert!(FileFilter::new(&["[".into()], &[]).is_err());
    }
}

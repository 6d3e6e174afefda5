//! The README stays short and leads to every guide page: at most 250
//! lines, each page under docs/ linked from it, and every relative link in
//! the README and the guide naming a file that exists.

use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The targets of the Markdown links `](target)` in `text`, without any
/// `#anchor`.
fn links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|target| target.split('#').next().unwrap_or("").to_owned())
        .filter(|target| !target.is_empty() && !target.contains("://"))
        .collect()
}

#[test]
fn the_readme_is_short_and_links_every_guide_page() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 250, "README.md has {lines} lines");
    let linked = links(&readme);
    let mut pages = vec![Path::new(ROOT).join("README.md")];
    for entry in std::fs::read_dir(Path::new(ROOT).join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = format!("docs/{}", path.file_name().unwrap().to_str().unwrap());
            assert!(linked.contains(&name), "README.md does not link {name}");
            pages.push(path);
        }
    }
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        for target in links(&text) {
            let path = page.parent().unwrap().join(&target);
            assert!(path.exists(), "{}: broken link {target}", page.display());
        }
    }
}

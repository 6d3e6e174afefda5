//! The AWS Query protocol's pieces: form-encoded requests, XML replies.

/// `application/x-www-form-urlencoded` with every byte but the unreserved
/// ones (`A-Z a-z 0-9 - _ . ~`) percent-encoded.
pub(crate) fn form_encode(pairs: &[(&str, &str)]) -> String {
    fn encode(out: &mut String, s: &str) {
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    let mut out = String::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(&mut out, key);
        out.push('=');
        encode(&mut out, value);
    }
    out
}

/// The text of the first element named `tag` (attributes allowed), with
/// the XML entities decoded. Enough for the flat STS responses.
pub(crate) fn xml_text(doc: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}");
    let mut from = 0;
    let content_start = loop {
        let at = from + doc[from..].find(&open)?;
        let after = at + open.len();
        match doc[after..].chars().next()? {
            '>' => break after + 1,
            c if c.is_whitespace() || c == '/' => {
                let gt = after + doc[after..].find('>')?;
                if doc[..gt].ends_with('/') {
                    return Some(String::new());
                }
                break gt + 1;
            }
            _ => from = after,
        }
    };
    let close = format!("</{tag}>");
    let len = doc[content_start..].find(&close)?;
    Some(xml_unescape(doc[content_start..content_start + len].trim()))
}

fn xml_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').and_then(|semi| {
            let entity = &rest[1..semi];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let code = if let Some(hex) = entity
                        .strip_prefix("#x")
                        .or_else(|| entity.strip_prefix("#X"))
                    {
                        u32::from_str_radix(hex, 16).ok()
                    } else {
                        entity.strip_prefix('#').and_then(|d| d.parse().ok())
                    };
                    code.and_then(char::from_u32)
                }
            };
            c.map(|c| (c, semi + 1))
        });
        match decoded {
            Some((c, used)) => {
                out.push(c);
                rest = &rest[used..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    #[test]
    fn xml_and_form_helpers() {
        assert_eq!(xml_text(STS_OK, "AccessKeyId").as_deref(), Some("ASIASTS"));
        assert_eq!(
            xml_text(STS_OK, "Credentials").map(|s| s.contains("ASIASTS")),
            Some(true)
        );
        assert_eq!(xml_text("<A>1</A><AB>2</AB>", "AB").as_deref(), Some("2"));
        assert_eq!(
            xml_text("<AB>2</AB><A x=\"y\">1</A>", "A").as_deref(),
            Some("1")
        );
        assert_eq!(xml_text("<A/>", "A").as_deref(), Some(""));
        assert_eq!(xml_text("<A>1", "A"), None);
        assert_eq!(
            xml_unescape("a&amp;b&lt;&#65;&#x42;&bogus;&"),
            "a&b<AB&bogus;&"
        );
        assert_eq!(
            form_encode(&[("a b", "x/y+z=~"), ("k", "é")]),
            "a%20b=x%2Fy%2Bz%3D~&k=%C3%A9"
        );
    }
}

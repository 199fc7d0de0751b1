//! DNS names in an egress rule's `to:`: exact names (`api.openai.com`) and label-bounded
//! wildcards (`*.example.com`: exactly one label below `example.com`; `**.example.com`: one or
//! more labels below it, never `example.com` itself).
//!
//! Names are ASCII: letters, digits, `-` and `_` (for `_service` labels); international names
//! are written in their `xn--` form. Case does not matter and a trailing dot is dropped; the
//! canonical form ([`NamePattern`]'s `Display`) is lowercase without it.
//!
//! Public suffixes, from the Public Suffix List compiled into the `psl` crate: a wildcard must
//! sit below a registrable domain, so `*.com` and `**.co.uk` are refused. The list's private
//! section counts too: its suffixes (`github.io`, `githubusercontent.com`, `ngrok.io`,
//! `s3.amazonaws.com`) are domains whose owner hands names below them to other parties, anyone
//! can get one, and a wildcard over them lets a fenced workload reach whoever that is; name the
//! hosts (`raw.githubusercontent.com`) instead. A name the list does not know ends in a
//! one-label public suffix (the list's default rule), so `*.internal` and `**.corp` are refused
//! too while `*.svc.internal` and `*.svc.cluster.local` are accepted. An exact name is refused
//! only when it is an ICANN suffix (`com`, `co.uk`): a private-section suffix can be a host
//! (`s3.amazonaws.com`), and so can a single-label internal name (`intranet`).

use std::{borrow::Cow, fmt};

use fence_common::PortRule;
use thiserror::Error;

use super::{
    PolicyErrorKind,
    net::{IpNet, Ports},
    set::Identity,
};

/// The longest name, in its dotted form without the trailing dot (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;
/// The longest label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// A name, or a wildcard over a domain, in canonical (lowercase) form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamePattern {
    /// `api.example.com`: this name only.
    Exact(String),
    /// `*.example.com`: exactly one label below the domain.
    OneLabel(String),
    /// `**.example.com`: one or more labels below the domain, not the domain itself.
    AnyLabels(String),
}

/// Why a name in `to:` was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is {len} bytes long; names are at most {MAX_NAME_LEN}")]
    TooLong { len: usize },
    #[error("it has an empty label (a leading dot or two dots in a row)")]
    EmptyLabel,
    #[error("label {label:?} is {len} bytes long; labels are at most {MAX_LABEL_LEN}")]
    LabelTooLong { label: String, len: usize },
    #[error(
        "label {label:?} holds {ch:?}; labels hold letters, digits, '-' and '_' (write \
         international names in their xn-- form)"
    )]
    BadCharacter { label: String, ch: char },
    #[error("label {label:?} starts or ends with '-'")]
    HyphenAtEdge { label: String },
    #[error("a wildcard must be the whole first label (*.example.com or **.example.com)")]
    WildcardNotFirst,
    #[error("label {label:?} mixes '*' with other characters; a wildcard is a whole label")]
    PartialWildcard { label: String },
    #[error("a wildcard needs a domain after it (*.example.com)")]
    WildcardAlone,
    #[error(
        "the wildcard is directly over the public suffix {suffix:?}, whose names belong to \
         whoever registers them; name a domain below it, or the hosts themselves"
    )]
    WildcardOverPublicSuffix { suffix: String },
    #[error("it is a public suffix (a top-level domain or the like), not a host")]
    PublicSuffix,
    #[error("its last label is all digits: write IP addresses as CIDRs (10.0.0.1 or 10.0.0.0/8)")]
    LooksLikeAddress,
}

impl NamePattern {
    /// Parses a name or wildcard as written in `to:` (case-insensitive, trailing dot allowed).
    pub fn parse(text: &str) -> Result<NamePattern, NameError> {
        let name = text.strip_suffix('.').unwrap_or(text);
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { len: name.len() });
        }
        let name = name.to_ascii_lowercase();
        let pattern = match name.split_once('.') {
            Some(("*", domain)) => NamePattern::OneLabel(domain.to_owned()),
            Some(("**", domain)) => NamePattern::AnyLabels(domain.to_owned()),
            _ if name == "*" || name == "**" => return Err(NameError::WildcardAlone),
            _ => NamePattern::Exact(name),
        };
        pattern.check()?;
        Ok(pattern)
    }

    /// The name, or the domain below which a wildcard matches.
    pub fn domain(&self) -> &str {
        match self {
            NamePattern::Exact(d) | NamePattern::OneLabel(d) | NamePattern::AnyLabels(d) => d,
        }
    }

    fn check(&self) -> Result<(), NameError> {
        let domain = self.domain();
        domain.split('.').try_for_each(check_label)?;
        if domain.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
            return Err(NameError::LooksLikeAddress);
        }
        let Some(suffix) = psl::suffix(domain.as_bytes()) else { return Ok(()) };
        if suffix.as_bytes().len() != domain.len() {
            return Ok(());
        }
        match self {
            NamePattern::Exact(_) if suffix.typ() == Some(psl::Type::Icann) => Err(NameError::PublicSuffix),
            NamePattern::Exact(_) => Ok(()),
            _ => Err(NameError::WildcardOverPublicSuffix { suffix: domain.to_owned() }),
        }
    }

    /// Whether `qname` (a query name in dotted form, any case, trailing dot or not) is matched.
    /// A query name that is not a valid host name (an empty label, a character other than a
    /// letter, digit, `-` or `_`, such as the `\.` of an escaped dot) matches nothing.
    pub fn matches(&self, qname: &str) -> bool {
        canonical_query(qname).is_some_and(|q| self.matches_canonical(&q))
    }

    /// [`Self::matches`] for a name [`canonical_query`] returned.
    fn matches_canonical(&self, qname: &str) -> bool {
        let below = |domain: &str| {
            let head = qname.strip_suffix(domain)?.strip_suffix('.')?;
            (!head.is_empty()).then_some(head)
        };
        match self {
            NamePattern::Exact(name) => qname == name,
            NamePattern::OneLabel(domain) => below(domain).is_some_and(|head| !head.contains('.')),
            NamePattern::AnyLabels(domain) => below(domain).is_some(),
        }
    }
}

/// One label of a name: 1-63 letters, digits, `-` or `_`, not starting or ending with `-`.
fn check_label(label: &str) -> Result<(), NameError> {
    let owned = || label.to_owned();
    if label.is_empty() {
        return Err(NameError::EmptyLabel);
    }
    if label == "*" || label == "**" {
        return Err(NameError::WildcardNotFirst);
    }
    if label.contains('*') {
        return Err(NameError::PartialWildcard { label: owned() });
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::LabelTooLong { label: owned(), len: label.len() });
    }
    if let Some(ch) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(NameError::BadCharacter { label: owned(), ch });
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::HyphenAtEdge { label: owned() });
    }
    Ok(())
}

/// A query name in canonical form (lowercase, no trailing dot), or `None` when it is not a
/// valid host name.
pub fn canonical_query(qname: &str) -> Option<Cow<'_, str>> {
    let name = qname.strip_suffix('.').unwrap_or(qname);
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.split('.').any(|l| check_label(l).is_err()) {
        return None;
    }
    Some(if name.bytes().any(|b| b.is_ascii_uppercase()) { Cow::Owned(name.to_ascii_lowercase()) } else { name.into() })
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Exact(name) => f.write_str(name),
            NamePattern::OneLabel(domain) => write!(f, "*.{domain}"),
            NamePattern::AnyLabels(domain) => write!(f, "**.{domain}"),
        }
    }
}

/// One entry of an egress rule's `to:`: a network or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Net(IpNet),
    Name(NamePattern),
}

impl Destination {
    /// An address or CIDR (anything with `/` or `:`, or only digits and dots) is parsed as a
    /// network, anything else as a name.
    pub fn parse(text: &str) -> Result<Destination, PolicyErrorKind> {
        let text = text.trim();
        if text.contains(['/', ':']) || text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return IpNet::parse(text).map(Destination::Net);
        }
        NamePattern::parse(text)
            .map(Destination::Name)
            .map_err(|why| PolicyErrorKind::InvalidDnsName { value: text.to_owned(), why })
    }
}

/// What an identity may reach at the addresses a name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAllowance {
    /// The egress rules with a pattern that matches the name, in policy order.
    pub rules: Vec<String>,
    /// The union of those rules' ports and protocols, merged as the kernel holds port rules
    /// (sorted, disjoint ranges; a TCP range and an identical UDP range joined into one).
    pub ports: Vec<PortRule>,
}

impl Identity {
    /// What the identity may reach at the addresses `qname` resolves to, or `None` when no
    /// egress rule names it (or the identity has expired: it is deny-all). `qname` is a query
    /// name in dotted form; one that is not a valid host name matches nothing.
    pub fn dns_allowance(&self, qname: &str) -> Option<DnsAllowance> {
        let qname = canonical_query(qname)?;
        if self.expired {
            return None;
        }
        let mut rules = Vec::new();
        let mut ports = Vec::new();
        for rule in self.egress.iter().filter(|r| r.names.iter().any(|n| n.matches_canonical(&qname))) {
            rules.push(rule.name.clone());
            ports.extend(rule.ports.iter().map(|p| (p.lo, p.hi, rule.protocols, rule.grant)));
        }
        (!rules.is_empty()).then(|| DnsAllowance { rules, ports: Ports::of(None, &ports).rules() })
    }

    /// Every name pattern in the identity's egress rules, in policy order.
    pub fn names(&self) -> impl Iterator<Item = &NamePattern> {
        self.egress.iter().flat_map(|r| r.names.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> NameError {
        NamePattern::parse(text).expect_err(text)
    }

    fn pat(text: &str) -> NamePattern {
        NamePattern::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn parses_names_and_wildcards_into_canonical_form() {
        assert_eq!(pat("API.OpenAI.com."), NamePattern::Exact("api.openai.com".into()));
        assert_eq!(pat("*.example.com"), NamePattern::OneLabel("example.com".into()));
        assert_eq!(pat("**.Example.COM"), NamePattern::AnyLabels("example.com".into()));
        assert_eq!(pat("**.Example.COM").to_string(), "**.example.com");
        assert_eq!(pat("_ldap._tcp.example.com").to_string(), "_ldap._tcp.example.com");
        assert_eq!(pat("xn--bcher-kva.example").to_string(), "xn--bcher-kva.example");
        for good in ["*.svc.cluster.local", "api.internal", "*.svc.internal", "intranet", "s3.amazonaws.com"] {
            pat(good);
        }
        pat(&format!("{}.example.com", "a".repeat(63)));
    }

    #[test]
    fn malformed_names_are_refused_with_the_reason() {
        let long_label = "a".repeat(64);
        let cases = [
            ("", NameError::Empty),
            (".", NameError::Empty),
            ("a..example.com", NameError::EmptyLabel),
            (".example.com", NameError::EmptyLabel),
            ("example.com..", NameError::EmptyLabel),
            ("*.", NameError::WildcardAlone),
            ("**", NameError::WildcardAlone),
            ("a.*.example.com", NameError::WildcardNotFirst),
            ("*.*.example.com", NameError::WildcardNotFirst),
            ("a*.example.com", NameError::PartialWildcard { label: "a*".into() }),
            ("***.example.com", NameError::PartialWildcard { label: "***".into() }),
            ("-a.example.com", NameError::HyphenAtEdge { label: "-a".into() }),
            ("a-.example.com", NameError::HyphenAtEdge { label: "a-".into() }),
            ("a b.example.com", NameError::BadCharacter { label: "a b".into(), ch: ' ' }),
            ("bücher.example", NameError::BadCharacter { label: "bücher".into(), ch: 'ü' }),
            ("host.123", NameError::LooksLikeAddress),
        ];
        for (text, want) in cases {
            assert_eq!(err(text), want, "{text}");
        }
        let text = format!("{long_label}.example.com");
        assert_eq!(err(&text), NameError::LabelTooLong { label: long_label.clone(), len: 64 });
        let text = [long_label.get(1..).unwrap_or_default(); 4].join(".");
        assert_eq!(err(&text), NameError::TooLong { len: 4 * 63 + 3 });
    }

    #[test]
    fn public_suffixes_are_refused() {
        let over = |s: &str| NameError::WildcardOverPublicSuffix { suffix: s.into() };
        assert_eq!(err("*.com"), over("com"));
        assert_eq!(err("**.com"), over("com"));
        assert_eq!(err("*.CO.UK"), over("co.uk"));
        assert_eq!(err("**.github.io"), over("github.io"));
        assert_eq!(err("*.githubusercontent.com"), over("githubusercontent.com"));
        assert_eq!(err("*.foo.nom.br"), over("foo.nom.br"), "the list's own wildcard rule *.nom.br");
        assert_eq!(err("*.internal"), over("internal"));
        assert_eq!(err("**.corp"), over("corp"));
        assert_eq!(err("com"), NameError::PublicSuffix);
        assert_eq!(err("co.uk."), NameError::PublicSuffix);
        pat("*.example.co.uk");
        pat("**.user.github.io");
        pat("github.io");
    }

    #[test]
    fn one_label_wildcards_match_exactly_one_label() {
        let p = pat("*.a.example");
        assert!(p.matches("x.a.example"));
        assert!(p.matches("X.A.Example."));
        assert!(!p.matches("a.example"));
        assert!(!p.matches("y.x.a.example"));
        assert!(!p.matches("xa.example"));
        assert!(!p.matches(".a.example"));
    }

    #[test]
    fn any_label_wildcards_match_one_or_more_labels() {
        let p = pat("**.a.example");
        for yes in ["x.a.example", "y.x.a.example", "Z.Y.X.A.EXAMPLE."] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in ["a.example", "xa.example", "x..a.example", "x\\.y.a.example", "", "."] {
            assert!(!p.matches(no), "{no}");
        }
    }

    #[test]
    fn exact_names_match_only_themselves() {
        let p = pat("api.example.com");
        assert!(p.matches("API.example.com."));
        assert!(!p.matches("x.api.example.com"));
        assert!(!p.matches("example.com"));
    }

    #[test]
    fn destinations_are_networks_or_names() {
        assert!(matches!(Destination::parse("10.0.0.0/8"), Ok(Destination::Net(_))));
        assert!(matches!(Destination::parse("::1"), Ok(Destination::Net(_))));
        assert!(matches!(Destination::parse("example.com"), Ok(Destination::Name(_))));
        assert!(matches!(Destination::parse("10.0.0.300"), Err(PolicyErrorKind::InvalidCidr { .. })));
        assert!(matches!(Destination::parse("*.com"), Err(PolicyErrorKind::InvalidDnsName { .. })));
    }
}

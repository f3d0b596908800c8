//! Microsoft Entra ID's endpoints and Exchange Online's scopes, derived from an identity's tenant or
//! authority. Pure: strings in, strings out, no IO; validation parses and checks the results.

/// The Entra authority used when neither `authority` nor `token_url` is configured.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// Exchange Online's resource; scopes of both flows are built on it by default.
pub const EXCHANGE_RESOURCE: &str = "https://outlook.office365.com";

/// Where an authority's token endpoint lives (OAuth 2.0 v2 endpoints).
const TOKEN_PATH: &str = "/oauth2/v2.0/token";
/// Where an authority's device authorization endpoint lives.
const DEVICE_CODE_PATH: &str = "/oauth2/v2.0/devicecode";

/// The authority of an identity, without a trailing slash: `authority` with `{tenant}` filled in
/// (a national cloud, another identity provider), else the worldwide authority of `tenant`.
/// `None` when neither is given; then only an explicit `token_url` says where tokens come from.
pub(super) fn authority(authority: Option<&str>, tenant: Option<&str>) -> Option<String> {
    let text = match (authority, tenant) {
        (Some(authority), _) => authority.replace("{tenant}", tenant.unwrap_or("")),
        (None, Some(tenant)) => format!("{DEFAULT_AUTHORITY_HOST}/{tenant}"),
        (None, None) => return None,
    };
    Some(text.trim_end_matches('/').to_string())
}

/// The token endpoint of an authority.
pub(super) fn token_url(authority: &str) -> String {
    format!("{authority}{TOKEN_PATH}")
}

/// The device authorization endpoint of an authority.
pub(super) fn device_code_url(authority: &str) -> String {
    format!("{authority}{DEVICE_CODE_PATH}")
}

/// The authority of an Entra-shaped token endpoint (`…/<tenant>/oauth2/v2.0/token`); `None` for
/// any other shape, e.g. another provider's endpoint.
pub(super) fn authority_of_token_url(token_url: &str) -> Option<&str> {
    token_url.strip_suffix(TOKEN_PATH)
}

/// Exchange Online's resource in the cloud of an Entra authority host: US Government (GCC High)
/// and China (21Vianet) differ from the worldwide service. DoD tenants
/// (`https://outlook-dod.office365.us`) share GCC High's authority, so they set `scope` themselves.
pub(super) fn exchange_resource_for(authority_host: Option<&str>) -> &'static str {
    match authority_host.map(|h| h.to_ascii_lowercase()).as_deref() {
        Some("login.microsoftonline.us") => "https://outlook.office365.us",
        Some("login.partner.microsoftonline.cn" | "login.chinacloudapi.cn") => {
            "https://partner.outlook.cn"
        }
        _ => EXCHANGE_RESOURCE,
    }
}

/// Microsoft Graph's worldwide service root (the resource of its tokens, too).
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";

/// Microsoft Graph in the cloud of an Entra authority host: the US Government clouds' Graph
/// (GCC High; DoD tenants use `https://dod-graph.microsoft.us`, which shares the authority, so they
/// set `graph.url` and `graph.scope`), or `None` in China (21Vianet), whose Graph offers no
/// message delta. Any other host (another identity provider, a test's) gets the worldwide one.
pub(super) fn graph_resource_for(authority_host: Option<&str>) -> Option<&'static str> {
    match authority_host.map(|h| h.to_ascii_lowercase()).as_deref() {
        Some("login.microsoftonline.us") => Some("https://graph.microsoft.us"),
        Some("login.partner.microsoftonline.cn" | "login.chinacloudapi.cn") => None,
        _ => Some(GRAPH_RESOURCE),
    }
}

/// Whether `host` is Graph operated by 21Vianet (no message delta there).
pub(super) fn is_china_graph_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "microsoftgraph.chinacloudapi.cn" || host.ends_with(".chinacloudapi.cn")
}

/// The scope asked for when `scope` is not configured. Delegated flows ask for IMAP and SMTP as
/// the user plus `offline_access` (a refresh token); app-only access asks for the permissions
/// granted to the app (`/.default`).
pub(super) fn default_scope(resource: &str, delegated: bool) -> String {
    if delegated {
        format!("{resource}/IMAP.AccessAsUser.All {resource}/SMTP.Send offline_access")
    } else {
        format!("{resource}/.default")
    }
}

/// App-only tokens are issued only for a `…/.default` scope.
pub(super) fn is_app_only_scope(scope: &str) -> bool {
    scope.trim_end().ends_with("/.default")
}

/// Without `offline_access` no refresh token is issued.
pub(super) fn asks_for_refresh_token(scope: &str) -> bool {
    scope.split_whitespace().any(|s| s == "offline_access")
}

/// The spellings of "your tenant" that setup guides and our own example use inside URLs: OpenIAM
/// and Microsoft write `{tenant}` or `{tenant-id}`, Efecte ESM `{tenantID}`, others `{tenantId}`,
/// config/example.toml `<tenant>`.
const TENANT_PLACEHOLDERS: &[&str] = &[
    "{tenant}",
    "{tenant-id}",
    "{tenantID}",
    "{tenantId}",
    "<tenant>",
];

/// `text` with every tenant placeholder replaced by `tenant`. Any other `{…}` or `<…>` is an
/// error that names it (it would be sent literally, and Entra answers AADSTS90002).
pub(super) fn fill_placeholders(text: &str, tenant: Option<&str>) -> Result<String, String> {
    let mut filled = text.trim().to_string();
    for placeholder in TENANT_PLACEHOLDERS {
        if filled.contains(placeholder) {
            let Some(tenant) = tenant else {
                return Err(format!(
                    "contains the placeholder {placeholder} but no tenant is set: set tenant = \"<Directory (tenant) ID>\", or write the ID into the URL"
                ));
            };
            filled = filled.replace(placeholder, tenant);
        }
    }
    let open = filled.find(['{', '<']);
    if let Some(start) = open {
        let close = if filled[start..].starts_with('{') {
            '}'
        } else {
            '>'
        };
        let end = filled[start..]
            .find(close)
            .map_or(filled.len(), |e| start + e + 1);
        return Err(format!(
            "contains the placeholder {} that mailintake cannot fill: replace it with its value (only {} stand for the tenant)",
            &filled[start..end],
            TENANT_PLACEHOLDERS.join(", ")
        ));
    }
    Ok(filled)
}

/// What an Entra URL pasted from a setup guide points at, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntraUrl {
    /// `…/oauth2/v2.0/token` (or v1 `…/oauth2/token`).
    Token,
    /// `…/oauth2/v2.0/authorize` (or v1 `…/oauth2/authorize`).
    Authorize,
    /// `…/oauth2/v2.0/devicecode`.
    DeviceCode,
    /// Anything else: taken as the authority itself (`https://login.microsoftonline.com/<tenant>`).
    Authority,
}

const AUTHORIZE_PATH: &str = "/oauth2/v2.0/authorize";
const V1_TOKEN_PATH: &str = "/oauth2/token";
const V1_AUTHORIZE_PATH: &str = "/oauth2/authorize";

/// What `url` is, and the authority it belongs to (without a trailing slash).
pub(super) fn classify(url: &str) -> (EntraUrl, &str) {
    let url = url.trim_end_matches('/');
    for (suffix, kind) in [
        (TOKEN_PATH, EntraUrl::Token),
        (V1_TOKEN_PATH, EntraUrl::Token),
        (AUTHORIZE_PATH, EntraUrl::Authorize),
        (V1_AUTHORIZE_PATH, EntraUrl::Authorize),
        (DEVICE_CODE_PATH, EntraUrl::DeviceCode),
    ] {
        if let Some(authority) = url.strip_suffix(suffix) {
            return (kind, authority);
        }
    }
    (EntraUrl::Authority, url)
}

/// A `scope` as guides write it, as OAuth wants it: Efecte ESM's comma-separated list (or any mix
/// of commas and white space) becomes one space-separated list.
pub(super) fn normalize_scope(scope: &str) -> String {
    scope
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The resources a scope list names (`https://outlook.office365.com` of
/// `https://outlook.office365.com/IMAP.AccessAsUser.All`), case-insensitively and once each;
/// resource-less scopes (`offline_access`, `openid`) name none. Entra issues a token for one
/// resource at a time (AADSTS28000 otherwise).
pub(super) fn scope_resources(scope: &str) -> Vec<String> {
    let mut resources: Vec<String> = Vec::new();
    for item in scope.split_whitespace() {
        let Some((resource, _)) = item.rsplit_once('/') else {
            continue;
        };
        if !resource.contains("://") {
            continue;
        }
        let resource = resource.to_ascii_lowercase();
        if !resources.contains(&resource) {
            resources.push(resource);
        }
    }
    resources
}

/// The redirect URI Entra offers every app for native clients; an administrator registers it on the
/// app once (Authentication > Add a platform > Mobile and desktop applications) and the
/// admin-consent URL can use it.
pub const NATIVE_CLIENT_REDIRECT_URI: &str =
    "https://login.microsoftonline.com/common/oauth2/nativeclient";

/// An admin-consent URL and what it was built from, for `mailintake consent-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConsent {
    pub url: url::Url,
    pub redirect_uri: String,
    /// The tenant the URL names: the customer's, or `organizations` (any tenant's administrator).
    pub tenant: String,
    pub scope: String,
}

/// The Microsoft identity platform's v2.0 admin-consent URL for `identity`:
/// `<host>/<tenant>/v2.0/adminconsent?client_id=…&scope=<resource>/.default&redirect_uri=…`. The
/// tenant is the authority's, with `common` (which no administrator can consent for) made
/// `organizations`; the scope is the Exchange Online resource of the authority's cloud.
pub fn admin_consent(identity: &super::Identity) -> Result<AdminConsent, String> {
    let Some(authority) = &identity.authority else {
        return Err(format!(
            "identity `{}` has only a token_url; admin consent is an Entra ID feature: give tenant or authority",
            identity.name
        ));
    };
    let host = authority.host_str().unwrap_or_default();
    let tenant = authority
        .path_segments()
        .and_then(|mut segments| segments.find(|s| !s.is_empty()))
        .ok_or_else(|| format!("the authority {authority} names no tenant"))?;
    let tenant = match tenant.to_ascii_lowercase().as_str() {
        "common" => "organizations".to_string(),
        "consumers" => {
            return Err(
                "personal Microsoft accounts (consumers) have no administrator to consent: set tenant to the customer's Directory (tenant) ID, or organizations".into(),
            );
        }
        _ => tenant.to_string(),
    };
    let scope = format!("{}/.default", exchange_resource_for(Some(host)));
    let redirect_uri = identity
        .consent_redirect_uri
        .as_ref()
        .map_or(NATIVE_CLIENT_REDIRECT_URI.to_string(), |u| u.to_string());
    let mut url = authority.clone();
    url.set_path(&format!("/{tenant}/v2.0/adminconsent"));
    url.set_query(None);
    url.query_pairs_mut()
        .append_pair("client_id", &identity.client_id)
        .append_pair("scope", &scope)
        .append_pair("redirect_uri", &redirect_uri);
    Ok(AdminConsent {
        url,
        redirect_uri,
        tenant,
        scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_comes_from_the_tenant_or_the_configured_authority() {
        assert_eq!(
            authority(None, Some("contoso.onmicrosoft.com")).as_deref(),
            Some("https://login.microsoftonline.com/contoso.onmicrosoft.com")
        );
        assert_eq!(
            authority(
                Some("https://login.microsoftonline.us/{tenant}/"),
                Some("t1")
            )
            .as_deref(),
            Some("https://login.microsoftonline.us/t1")
        );
        // An authority without the placeholder is taken as it is; the tenant is then unused.
        assert_eq!(
            authority(Some("https://idp.example.net/realm"), Some("t1")).as_deref(),
            Some("https://idp.example.net/realm")
        );
        assert_eq!(authority(None, None), None);
    }

    #[test]
    fn endpoints_derive_from_the_authority_and_back() {
        let authority = "https://login.microsoftonline.com/t1";
        assert_eq!(
            token_url(authority),
            "https://login.microsoftonline.com/t1/oauth2/v2.0/token"
        );
        assert_eq!(
            device_code_url(authority),
            "https://login.microsoftonline.com/t1/oauth2/v2.0/devicecode"
        );
        assert_eq!(
            authority_of_token_url(&token_url(authority)),
            Some(authority)
        );
        assert_eq!(
            authority_of_token_url("https://idp.example.net/oauth/token"),
            None
        );
    }

    #[test]
    fn each_cloud_has_its_exchange_resource() {
        assert_eq!(exchange_resource_for(None), EXCHANGE_RESOURCE);
        assert_eq!(
            exchange_resource_for(Some("login.microsoftonline.com")),
            EXCHANGE_RESOURCE
        );
        assert_eq!(
            exchange_resource_for(Some("Login.MicrosoftOnline.US")),
            "https://outlook.office365.us"
        );
        for host in ["login.partner.microsoftonline.cn", "login.chinacloudapi.cn"] {
            assert_eq!(
                exchange_resource_for(Some(host)),
                "https://partner.outlook.cn"
            );
        }
        assert_eq!(
            exchange_resource_for(Some("idp.example.net")),
            EXCHANGE_RESOURCE
        );
    }

    #[test]
    fn default_scopes_per_kind_of_access() {
        let app_only = default_scope(EXCHANGE_RESOURCE, false);
        assert_eq!(app_only, "https://outlook.office365.com/.default");
        assert!(is_app_only_scope(&app_only));
        assert!(!asks_for_refresh_token(&app_only));

        let delegated = default_scope("https://partner.outlook.cn", true);
        assert_eq!(
            delegated,
            "https://partner.outlook.cn/IMAP.AccessAsUser.All https://partner.outlook.cn/SMTP.Send offline_access"
        );
        assert!(!is_app_only_scope(&delegated));
        assert!(asks_for_refresh_token(&delegated));
        assert!(!asks_for_refresh_token(
            "https://outlook.office365.com/offline_access_x"
        ));
    }

    #[test]
    fn the_tenant_placeholders_of_the_guides_are_filled_and_others_named() {
        let tenant = Some("8c3a1f52-4b7e-4d0a-9a43-1f0e6c2d7b10");
        for text in [
            "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
            "https://login.microsoftonline.com/{tenant-id}/oauth2/v2.0/token",
            "https://login.microsoftonline.com/{tenantID}/oauth2/v2.0/token",
            "https://login.microsoftonline.com/{tenantId}/oauth2/v2.0/token",
            "https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token",
        ] {
            assert_eq!(
                fill_placeholders(text, tenant).unwrap(),
                "https://login.microsoftonline.com/8c3a1f52-4b7e-4d0a-9a43-1f0e6c2d7b10/oauth2/v2.0/token",
                "{text}"
            );
        }
        let other = fill_placeholders(
            "https://login.microsoftonline.com/{directory}/oauth2/v2.0/token",
            tenant,
        )
        .unwrap_err();
        assert!(other.contains("{directory}"), "{other}");
        let no_tenant =
            fill_placeholders("https://login.microsoftonline.com/{tenant-id}", None).unwrap_err();
        assert!(no_tenant.contains("no tenant is set"), "{no_tenant}");
    }

    #[test]
    fn pasted_urls_are_told_apart_by_their_path() {
        let t = "https://login.microsoftonline.com/contoso.onmicrosoft.com";
        assert_eq!(
            classify(&format!("{t}/oauth2/v2.0/token")),
            (EntraUrl::Token, t)
        );
        assert_eq!(classify(&format!("{t}/oauth2/token")), (EntraUrl::Token, t));
        assert_eq!(
            classify(&format!("{t}/oauth2/v2.0/authorize/")),
            (EntraUrl::Authorize, t)
        );
        assert_eq!(
            classify(&format!("{t}/oauth2/v2.0/devicecode")),
            (EntraUrl::DeviceCode, t)
        );
        assert_eq!(classify(&format!("{t}/")), (EntraUrl::Authority, t));
    }

    #[test]
    fn comma_separated_scopes_become_one_list_and_their_resources_are_named() {
        let esm = "https://outlook.office365.com/IMAP.AccessAsUser.All,https://outlook.office365.com/SMTP.Send";
        assert_eq!(
            normalize_scope(esm),
            "https://outlook.office365.com/IMAP.AccessAsUser.All https://outlook.office365.com/SMTP.Send"
        );
        assert_eq!(normalize_scope(" a, b  c,"), "a b c");
        assert_eq!(
            scope_resources(&normalize_scope(esm)),
            ["https://outlook.office365.com"]
        );
        assert_eq!(
            scope_resources(
                "https://outlook.office365.com/IMAP.AccessAsUser.All https://graph.microsoft.com/Mail.Read offline_access"
            ),
            [
                "https://outlook.office365.com",
                "https://graph.microsoft.com"
            ]
        );
    }
}

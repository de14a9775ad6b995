//! gRPC server reflection (`plugins.envoy_ext_authz_grpc.enable-reflection`), as the plugin's
//! `reflection.Register` gives it: `grpc.reflection.v1.ServerReflection` and
//! `grpc.reflection.v1alpha.ServerReflection` on the gRPC listener, so that `grpcurl`-style
//! clients can list the services and describe their methods and messages.
//!
//! Listed and described: `envoy.service.auth.v3.Authorization` (its file and every file it
//! imports, built from `envoy-types`' descriptors by `build.rs`), `grpc.health.v1.Health` and
//! both reflection services. `envoy.service.auth.v2.Authorization` is served but not listed:
//! Envoy's v2 API protos are no longer published with the v3 ones, so there is no descriptor
//! to describe it with.

use tonic::service::Routes;

/// `envoy/service/auth/v3/external_auth.proto` and its imports, as an encoded
/// `FileDescriptorSet` (without source info).
pub const EXT_AUTHZ_V3_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ext_authz_v3_descriptors.bin"));

/// The health service's descriptors under the file name grpc-go registers
/// (`grpc/health/v1/health.proto`; tonic-health names the file `health.proto`). The file has no
/// custom options, so decoding and re-encoding it loses nothing.
fn health_descriptors() -> anyhow::Result<prost_types::FileDescriptorSet> {
    use prost::Message;
    let mut set = prost_types::FileDescriptorSet::decode(tonic_health::pb::FILE_DESCRIPTOR_SET)?;
    for f in &mut set.file {
        if f.name() == "health.proto" {
            f.name = Some("grpc/health/v1/health.proto".into());
        }
    }
    Ok(set)
}

/// Every descriptor set the reflection services know: the services listed are those they declare.
fn builder() -> anyhow::Result<tonic_reflection::server::Builder<'static>> {
    Ok(tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(EXT_AUTHZ_V3_DESCRIPTORS)
        .register_file_descriptor_set(health_descriptors()?)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET))
}

/// `routes` with both reflection services added.
pub(crate) fn add_services(routes: Routes) -> anyhow::Result<Routes> {
    let v1 = builder()?.build_v1()?;
    let v1alpha = builder()?.build_v1alpha()?;
    Ok(routes.add_service(v1).add_service(v1alpha))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn descriptors_hold_the_authorization_service_and_its_imports() {
        let set = prost_types::FileDescriptorSet::decode(EXT_AUTHZ_V3_DESCRIPTORS).unwrap();
        let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
        let auth = set.file.iter().find(|f| f.name() == "envoy/service/auth/v3/external_auth.proto").unwrap();
        assert_eq!(auth.service.len(), 1);
        assert_eq!(auth.service[0].name(), "Authorization");
        assert_eq!(auth.service[0].method[0].name(), "Check");
        // Every import is in the set and comes before the file importing it; no source info.
        for (i, f) in set.file.iter().enumerate() {
            assert!(f.source_code_info.is_none(), "{} keeps its source info", f.name());
            for d in &f.dependency {
                let j = names.iter().position(|n| n == d).unwrap_or_else(|| panic!("{} imports {d}, missing", f.name()));
                assert!(j < i, "{d} comes after {}", f.name());
            }
        }
        // A decodable pool: every type reference resolves.
        let pool = prost_reflect::DescriptorPool::decode(EXT_AUTHZ_V3_DESCRIPTORS).unwrap();
        let check = pool.get_message_by_name("envoy.service.auth.v3.CheckRequest").unwrap();
        assert!(check.get_field_by_name("attributes").is_some());
    }

    #[test]
    fn custom_options_are_kept() {
        // validate.rules on CheckResponse fields and udpa annotations on the files travel as
        // extension fields the prost types do not model; the set keeps their bytes.
        let pool = prost_reflect::DescriptorPool::decode(EXT_AUTHZ_V3_DESCRIPTORS).unwrap();
        let file = pool.get_file_by_name("envoy/service/auth/v3/external_auth.proto").unwrap();
        let opts = file.options();
        let has_extension = opts.extensions().any(|(ext, _)| ext.full_name().starts_with("udpa.annotations."));
        assert!(has_extension, "file options lost their udpa annotations: {opts:?}");
    }
}

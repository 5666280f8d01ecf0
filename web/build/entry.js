// The page's MLS library: the parts of ts-mls (RFC 9420) that web/mls.js uses, bundled by
// build.sh into web/mls.bundle.js so the relay serves it same-origin and fetches nothing.
// Keep this list small: every name here is part of the bundle's interface.
export {
  acceptAll,
  createCommit,
  createGroup,
  decodeMlsMessage,
  defaultCapabilities,
  defaultLifetime,
  emptyPskIndex,
  encodeMlsMessage,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  mlsExporter,
  processMessage,
} from 'ts-mls';

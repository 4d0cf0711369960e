/*
 * peer.c: the names of a peer's states (a standby as the primary sees it,
 * replicate.h), shown by status and metrics. In the codec library: the
 * server shows a primary's peers without linking the shipper (libcurl).
 */
#include "replicate.h"

const char *replicate_peer_state_name(replicate_peer_state state)
{
  switch (state) {
  case REPLICATE_PEER_STREAMING: return "streaming";
  case REPLICATE_PEER_CATCHING_UP: return "catching_up";
  case REPLICATE_PEER_BASE_SYNC: return "base_sync";
  case REPLICATE_PEER_UNREACHABLE: return "unreachable";
  case REPLICATE_PEER_UNAUTHORIZED: return "unauthorized";
  case REPLICATE_PEER_FENCED: return "fenced";
  case REPLICATE_PEER_DIVERGED: return "diverged";
  case REPLICATE_PEER_STALLED: return "stalled";
  case REPLICATE_PEER_REFUSED: return "refused";
  }
  return "unknown";
}

const char *replicate_peer_error_kind_name(replicate_peer_error_kind kind)
{
  switch (kind) {
  case REPLICATE_PEER_ERROR_UNREACHABLE: return "unreachable";
  case REPLICATE_PEER_ERROR_STALLED: return "stalled";
  case REPLICATE_PEER_ERROR_REFUSED: return "refused";
  case REPLICATE_PEER_ERROR_UNAUTHORIZED: return "unauthorized";
  case REPLICATE_PEER_ERROR_LOCAL: return "local";
  case REPLICATE_PEER_ERROR_KINDS: break;
  }
  return "unknown";
}

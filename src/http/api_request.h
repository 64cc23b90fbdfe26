// The one mapping from a parsed HTTP request (Beast) to the API's view of it, and the one
// parser set-up. Header-only, so the http_request fuzz target (tests/fuzz) runs exactly what
// the server runs without linking the server and its coroutines.
#pragma once

#include <cstdint>
#include <string_view>

#include <boost/beast/http.hpp>

#include "api/api.h"
#include "cluster/forward_batch.h"

namespace skyring {

using HttpRequestParser = boost::beast::http::request_parser<boost::beast::http::string_body>;

inline void limit_request_parser(HttpRequestParser& parser, size_t max_header_bytes,
                                 size_t max_body_bytes) {
  parser.header_limit(static_cast<std::uint32_t>(max_header_bytes));
  parser.body_limit(max_body_bytes);
}

// The views point into `req`, which must outlive the ApiRequest.
inline ApiRequest to_api_request(
    const boost::beast::http::request<boost::beast::http::string_body>& req) {
  ApiRequest areq;
  areq.method = std::string_view(req.method_string().data(), req.method_string().size());
  areq.target = std::string_view(req.target().data(), req.target().size());
  auto tid = req["x-timer-id"];
  areq.timer_id = std::string_view(tid.data(), tid.size());
  areq.body = req.body();
  auto view = [](boost::beast::string_view v) { return std::string_view(v.data(), v.size()); };
  areq.content_type = view(req[boost::beast::http::field::content_type]);
  areq.cluster = view(req["x-skyring-cluster"]);
  auto hops = req.find("x-skyring-hops");
  if (hops != req.end()) areq.hops = cluster::parse_hops(view(hops->value()), kMaxHopsHeaderValue);
  areq.fallback = req.find("x-skyring-fallback") != req.end();
  return areq;
}

}  // namespace skyring

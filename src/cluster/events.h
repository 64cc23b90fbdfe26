// Events on NATS (SPEC section 5; docs/cluster.md, "Events"): timer lifecycle events on
// "skyring:events" and node events on "skyring:node", one JSON object per message with at
// least "type", "node" and (timer events) "timer", as the Node.js Skyring sent them.
// Publishing goes through NatsBus::publish: bounded, never blocking, never failing a request.
//
// Timer event: {"type":"create|replace|execute|success|fail|cancel|evict","node":..,
//   "cluster":..,"timer":id,"created":ms,"due":ms,"timeout":ms,"attempt":attempts,
//   "state":..,"error":last_error (only when set),"callback":{"transport","method","uri"},
//   "time":ms}  (times in ms since the Unix epoch)
// Node event: {"type":..,"node":..,"cluster":..,"time":ms, <fields>}
// on_timer runs on the engine thread for every change: one buffer on the stack, one string.
#pragma once

#include <string>
#include <string_view>

#include "base/clock.h"
#include "cluster/nats_bus.h"
#include "engine/timer_engine.h"

namespace skyring::cluster {

inline constexpr std::string_view kTimerEventsSubject = "skyring:events";
inline constexpr std::string_view kNodeEventsSubject = "skyring:node";

class EventPublisher final : public EngineObserver {
 public:
  // clock: for each event's "time"; nullptr = the system clock.
  EventPublisher(NatsBus& bus, std::string node_id, std::string cluster,
                 const Clock* clock = nullptr);
  void on_timer(TimerEvent event, const TimerRecord& record) override;
  // type: ready, recover, rebalance, purge, shutdown; fields: extra JSON members without
  // braces (e.g. R"("count":3)"), or empty.
  void node_event(std::string_view type, std::string_view fields = {});

 private:
  NatsBus& bus_;
  std::string node_id_;
  std::string cluster_;
  const Clock& clock_;
};

}  // namespace skyring::cluster

#pragma once
// Helpers for the multi-rank tests: the world communicator and the EP sizes that fit it.
#include <vector>

#include "parallel/mpi_communicator.h"

namespace moe::testing {

inline MpiCommunicator& world() {
  static MpiCommunicator comm(MPI_COMM_WORLD);
  return comm;
}

// Every EP size that divides both the world size and num_experts.
inline std::vector<int> ep_sizes(int64_t num_experts) {
  std::vector<int> out;
  for (int ep = 1; ep <= world().size(); ++ep) {
    if (world().size() % ep == 0 && num_experts % ep == 0) out.push_back(ep);
  }
  return out;
}

}  // namespace moe::testing

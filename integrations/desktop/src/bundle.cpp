#include "bundle.h"

#include <sys/stat.h>

namespace edgec {
namespace {

constexpr int64_t kSchemaVersion = 1;

bool is_file(const std::string& path, int64_t* size = nullptr) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  if (size) *size = st.st_size;
  return true;
}

// the manifest's value at `key`, or a one-line error naming it
const json::Value& field(const json::Value& object, const std::string& key, const std::string& where) {
  const json::Value* v = object.find(key);
  if (!v) throw BundleError("manifest.json has no '" + key + "' in " + where + ": re-export the bundle");
  return *v;
}

std::vector<TensorSpec> specs(const json::Value& artifact, const std::string& side) {
  std::vector<TensorSpec> out;
  const json::Value* list = artifact.find(side);
  if (!list) return out;
  for (const auto& t : list->array()) {
    TensorSpec s{t.at("name").str(), t.at("dtype").str(), {}};
    for (const auto& d : t.at("shape").array()) s.shape.push_back(d.is_number() ? d.integer() : -1);
    out.push_back(s);
  }
  return out;
}

}  // namespace

Bundle Bundle::open(const std::string& dir, const std::string& artifact) {
  Bundle b;
  b.dir = dir;
  const std::string manifest = dir + "/manifest.json";
  if (!is_file(manifest))
    throw BundleError("no manifest.json in " + dir + ": give a bundle folder written by edgec export");
  try {
    b.manifest = json::parse_file(manifest);
  } catch (const json::Error& e) {
    throw BundleError(std::string(e.what()) + ": manifest.json is broken, re-export the bundle");
  }
  try {
    const auto& version = field(b.manifest, "schema_version", "the top level");
    if (version.integer() != kSchemaVersion)
      throw BundleError("manifest.json has schema version " + std::to_string(version.integer()) +
                        "; this runner reads version " + std::to_string(kSchemaVersion) +
                        ": use the runner of the edgec that wrote the bundle");
    b.task = field(b.manifest, "task", "the top level").str();
    const json::Value* chosen = nullptr;
    std::vector<std::string> programs;
    for (const auto& a : field(b.manifest, "artifacts", "the top level").array()) {
      if (field(a, "format", "an artifact").str() != "pte") continue;
      programs.push_back(field(a, "path", "an artifact").str());
      if (artifact.empty() ? chosen == nullptr : programs.back() == artifact) chosen = &a;
    }
    if (programs.empty())
      throw BundleError("the bundle in " + dir + " has no .pte program: export it with --target cpu");
    if (!chosen)
      throw BundleError("the bundle has no program '" + artifact + "': pick one of its .pte files (" +
                        programs.front() + (programs.size() > 1 ? ", ..." : "") + ")");
    if (artifact.empty() && programs.size() > 1)
      throw BundleError("the bundle has " + std::to_string(programs.size()) +
                        " programs: pick one with --artifact (" + programs.front() + ", ...)");
    b.program_name = chosen->at("path").str();
    b.program = dir + "/" + b.program_name;
    b.runtime = field(*chosen, "runtime", b.program_name).str();
    int64_t size = 0;
    if (!is_file(b.program, &size))
      throw BundleError("the bundle lacks " + b.program_name + ", which its manifest lists: copy the whole bundle folder");
    int64_t expected = field(*chosen, "bytes", b.program_name).integer();
    if (size != expected)
      throw BundleError(b.program_name + " is " + std::to_string(size) + " bytes but the manifest says " +
                        std::to_string(expected) + ": the file is truncated or replaced, copy the bundle again");
    b.inputs = specs(*chosen, "inputs");
    b.outputs = specs(*chosen, "outputs");
    if (const json::Value* tok = b.manifest.find("tokenizer")) {
      b.tokenizer = dir + "/" + field(*tok, "path", "tokenizer").str();
      if (!is_file(b.tokenizer))
        throw BundleError("the bundle lacks " + tok->at("path").str() + ", which its manifest lists: "
                          "copy the whole bundle folder");
    }
    if (const json::Value* g = chosen->find("golden")) {
      b.golden = dir + "/" + field(*g, "path", b.program_name + "'s golden").str();
      if (!is_file(b.golden))
        throw BundleError("the bundle lacks " + g->at("path").str() + ", which its manifest lists: "
                          "copy the whole bundle folder");
    }
  } catch (const json::Error& e) {
    throw BundleError(std::string("manifest.json does not follow schema version 1 (") + e.what() +
                      "): re-export the bundle");
  }
  return b;
}

std::string Bundle::label(int64_t index) const {
  if (const json::Value* labels = manifest.find("labels"))
    if (const json::Value* name = labels->find(std::to_string(index)); name && name->is_string()) return name->str();
  return "class " + std::to_string(index);
}

}  // namespace edgec

// edgec-run: runs an edgec bundle's .pte with ExecuTorch's C++ runtime, no Python.
//
// Encoders print a sentence embedding or class scores; language models stream greedy text.
// --selftest checks the bundle's golden vectors. Load time, per-run latency and peak memory go to
// stderr (or a "stats" line with --json). Problems are one line on stderr and exit code 1
// (2 for a wrong command line).

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <numeric>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include "bundle.h"
#include "npz.h"
#include "tokenizer.h"

// The wheel ships the threadpool library but not its header: the two calls used, as it exports them.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::runtime::EValue;
using Clock = std::chrono::steady_clock;

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* kUsage =
    "usage: edgec-run BUNDLE [--text T]... [--texts FILE] [--pixels FILE.npy] [--prompt T] [--max-new-tokens N]\n"
    "                 [--selftest] [--runs N] [--threads N] [--artifact NAME] [--json] [--verbose]\n";

struct Options {
  std::string bundle, artifact, pixels, prompt;
  std::vector<std::string> texts;
  int max_new_tokens = 32, runs = 1, threads = 0;
  bool selftest = false, json = false, verbose = false;
};

int positive(const std::string& flag, const std::string& value) {
  try {
    size_t used = 0;
    int n = std::stoi(value, &used);
    if (used == value.size() && n > 0) return n;
  } catch (const std::exception&) {
  }
  throw UsageError(flag + " takes a positive whole number, got '" + value + "'");
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "--text") o.texts.push_back(value());
    else if (a == "--texts") {
      std::string path = value();
      std::ifstream f(path);
      if (!f) throw UsageError("cannot read " + path + ": give a UTF-8 file with one text per line");
      for (std::string line; std::getline(f, line);) o.texts.push_back(line);
    } else if (a == "--pixels") o.pixels = value();
    else if (a == "--prompt") o.prompt = value();
    else if (a == "--max-new-tokens") o.max_new_tokens = positive(a, value());
    else if (a == "--runs") o.runs = positive(a, value());
    else if (a == "--threads") o.threads = positive(a, value());
    else if (a == "--artifact") o.artifact = value();
    else if (a == "--selftest") o.selftest = true;
    else if (a == "--json") o.json = true;
    else if (a == "--verbose") o.verbose = true;
    else if (a == "-h" || a == "--help") { std::cout << kUsage; std::exit(0); }
    else if (!a.empty() && a[0] == '-') throw UsageError("unknown option " + a + " (see --help)");
    else if (o.bundle.empty()) o.bundle = a;
    else throw UsageError("give one bundle folder, got '" + o.bundle + "' and '" + a + "'");
  }
  if (o.bundle.empty()) throw UsageError("give a bundle folder (see --help)");
  return o;
}

// ---- ExecuTorch's own log lines: hidden unless --verbose; the last error is quoted in ours

bool g_verbose = false;
std::string g_last_error;

void emit_log(et_timestamp_t, et_pal_log_level_t level, const char*, const char*, size_t, const char* message,
              size_t length) {
  std::string line(message, length);
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  if (level == kError || level == kFatal) g_last_error = line;
  if (g_verbose) std::cerr << "[executorch] " << line << "\n";
}

std::string why(executorch::runtime::Error e) {
  std::string s = executorch::runtime::to_string(e);
  if (!g_last_error.empty()) s += ": " + g_last_error;
  g_last_error.clear();
  return s;
}

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024.0;  // Linux reports kilobytes
}

std::string numbers(const std::vector<double>& v, int precision = 9) {
  std::ostringstream s;
  s.precision(precision);
  s << "[";
  for (size_t i = 0; i < v.size(); ++i) s << (i ? ", " : "") << v[i];
  return s.str() + "]";
}

template <typename T>
std::string ints(const std::vector<T>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// ---- the program

class Program {
 public:
  Program(const std::string& path, const std::string& name) : name_(name) {
    auto t0 = Clock::now();
    module_ = std::make_unique<Module>(path, Module::LoadMode::Mmap);
    if (auto e = module_->load(); e != executorch::runtime::Error::Ok)
      throw std::runtime_error(name + " is not a valid ExecuTorch program (" + why(e) + "): re-export the bundle");
    if (auto e = module_->load_method("forward"); e != executorch::runtime::Error::Ok)
      throw std::runtime_error(name + ": ExecuTorch could not load 'forward' (" + why(e) +
                               "); the program needs kernels or a backend this runner lacks, re-export it for XNNPACK");
    load_ms = ms_since(t0);
  }

  // outputs of `forward`; each run is timed
  std::vector<EValue> run(const std::vector<EValue>& inputs) {
    auto t0 = Clock::now();
    auto out = module_->forward(inputs);
    double ms = ms_since(t0);
    if (!out.ok()) throw std::runtime_error(name_ + " failed to run (" + why(out.error()) + ")");
    run_ms.push_back(ms);
    return std::move(out.get());
  }

  // a constant method's values (an LM program's context, vocabulary, EOS ids)
  std::vector<int64_t> constant(const std::string& method) {
    auto out = module_->execute(method);
    if (!out.ok())
      throw std::runtime_error(name_ + " has no '" + method + "' method (" + why(out.error()) +
                               "): it is not an edgec LM program, re-export it");
    std::vector<int64_t> values;
    for (const auto& v : out.get()) values.push_back(v.toInt());
    return values;
  }

  double load_ms = 0;
  std::vector<double> run_ms;

 private:
  std::string name_;
  std::unique_ptr<Module> module_;
};

std::vector<double> to_doubles(const EValue& v) {
  const auto& t = v.toTensor();
  std::vector<double> out(static_cast<size_t>(t.numel()));
  switch (t.scalar_type()) {
    case ScalarType::Float: std::copy_n(t.const_data_ptr<float>(), out.size(), out.begin()); break;
    case ScalarType::Long: std::copy_n(t.const_data_ptr<int64_t>(), out.size(), out.begin()); break;
    case ScalarType::Int: std::copy_n(t.const_data_ptr<int32_t>(), out.size(), out.begin()); break;
    case ScalarType::Bool: std::copy_n(t.const_data_ptr<bool>(), out.size(), out.begin()); break;
    default: throw std::runtime_error("the program returned a tensor of a type this runner does not read");
  }
  return out;
}

ScalarType scalar_type(const std::string& dtype) {
  if (dtype == "int64") return ScalarType::Long;
  if (dtype == "int32") return ScalarType::Int;
  if (dtype == "float32") return ScalarType::Float;
  throw std::runtime_error("the program takes a " + dtype + " input, which this runner does not feed");
}

// one input tensor in the dtype the manifest names, from integer or float values
TensorPtr make_input(const edgec::TensorSpec& spec, const std::vector<double>& values) {
  std::vector<executorch::aten::SizesType> sizes(spec.shape.begin(), spec.shape.end());
  int64_t n = 1;
  for (auto d : spec.shape) n *= d;
  if (static_cast<int64_t>(values.size()) != n)
    throw std::runtime_error("input '" + spec.name + "' needs " + std::to_string(n) + " values, got " +
                             std::to_string(values.size()));
  switch (scalar_type(spec.dtype)) {
    case ScalarType::Long: return executorch::extension::make_tensor_ptr(sizes, std::vector<int64_t>(values.begin(), values.end()));
    case ScalarType::Int: return executorch::extension::make_tensor_ptr(sizes, std::vector<int32_t>(values.begin(), values.end()));
    default: return executorch::extension::make_tensor_ptr(sizes, std::vector<float>(values.begin(), values.end()));
  }
}

std::vector<EValue> as_evalues(const std::vector<TensorPtr>& tensors) {
  return std::vector<EValue>(tensors.begin(), tensors.end());
}

double cosine(const std::vector<double>& a, const std::vector<double>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) { ab += a[i] * b[i]; aa += a[i] * a[i]; bb += b[i] * b[i]; }
  return ab / std::max(std::sqrt(aa * bb), 1e-12);
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

int64_t argmax(const double* v, size_t n) {
  return std::max_element(v, v + n) - v;
}

// ---- encoders

class Encoder {
 public:
  Encoder(const edgec::Bundle& b, Program& program) : bundle_(b), program_(program) {
    if (b.inputs.empty() || b.outputs.empty())
      throw std::runtime_error("manifest.json lists no inputs or outputs for " + b.program_name + ": re-export the bundle");
    for (const auto& spec : b.inputs)
      if (std::count(spec.shape.begin(), spec.shape.end(), -1))
        throw std::runtime_error("input '" + spec.name + "' of " + b.program_name + " has a dynamic shape; the runner "
                                 "feeds encoders static shapes only, re-export with a fixed --seq-len");
  }

  // the model's outputs for one set of inputs, by input name
  std::vector<std::vector<double>> run(const std::map<std::string, std::vector<double>>& feed) {
    std::vector<TensorPtr> tensors;
    for (const auto& spec : bundle_.inputs) {
      auto it = feed.find(spec.name);
      if (it == feed.end()) throw std::runtime_error("no value for the program's input '" + spec.name + "'");
      tensors.push_back(make_input(spec, it->second));
    }
    std::vector<std::vector<double>> out;
    for (const auto& v : program_.run(as_evalues(tensors))) out.push_back(to_doubles(v));
    return out;
  }

 private:
  const edgec::Bundle& bundle_;
  Program& program_;
};

// token ids and mask as the text encoder's feed; token_type_ids (BERT) are all zero
std::map<std::string, std::vector<double>> text_feed(const edgec::Encoding& e) {
  return {{"input_ids", {e.ids.begin(), e.ids.end()}},
          {"attention_mask", {e.attention_mask.begin(), e.attention_mask.end()}},
          {"token_type_ids", std::vector<double>(e.ids.size(), 0.0)}};
}

// masked mean over tokens; a token-budget model returns the mask of the tokens it kept
std::vector<double> pooled(const std::vector<std::vector<double>>& out, const std::vector<double>& input_mask) {
  const auto& hidden = out[0];
  const auto& mask = out.size() > 1 ? out[1] : input_mask;
  size_t tokens = mask.size(), dims = hidden.size() / tokens;
  std::vector<double> e(dims, 0.0);
  double count = 0;
  for (size_t t = 0; t < tokens; ++t) {
    if (mask[t] == 0) continue;
    count += mask[t];
    for (size_t d = 0; d < dims; ++d) e[d] += hidden[t * dims + d] * mask[t];
  }
  for (auto& v : e) v /= std::max(count, 1.0);
  return e;
}

std::vector<double> softmax(const std::vector<double>& logits) {
  double top = *std::max_element(logits.begin(), logits.end()), sum = 0;
  std::vector<double> p(logits.size());
  for (size_t i = 0; i < p.size(); ++i) sum += p[i] = std::exp(logits[i] - top);
  for (auto& v : p) v /= sum;
  return p;
}

// ---- language models

class Generator {
 public:
  Generator(Program& program, const edgec::Tokenizer& tok) : program_(program), tok_(tok) {
    context = program.constant("get_max_context_len").at(0);
    chunk = program.constant("get_max_seq_len").at(0);
    vocab = program.constant("get_vocab_size").at(0);
    for (auto e : program.constant("get_eos_ids")) eos.push_back(e);
  }

  // greedy tokens after `ids` (EOS included when reached); `stream` prints text as it forms
  void check(const std::vector<int64_t>& ids, int max_new) const {
    if (ids.empty() || static_cast<int64_t>(ids.size()) + max_new > context)
      throw std::runtime_error(std::to_string(ids.size()) + " prompt + " + std::to_string(max_new) +
                               " new tokens: the program holds " + std::to_string(context) +
                               " tokens of context, ask for fewer new tokens or a shorter prompt");
  }

  std::vector<int64_t> generate(const std::vector<int64_t>& ids, int max_new, bool stream) {
    check(ids, max_new);
    std::vector<double> last;
    for (size_t at = 0; at < ids.size(); at += static_cast<size_t>(chunk)) {
      std::vector<int64_t> piece(ids.begin() + static_cast<std::ptrdiff_t>(at),
                                 ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), at + chunk)));
      last = step(piece, static_cast<int64_t>(at));
    }
    std::vector<int64_t> out;
    std::string shown;
    int64_t pos = static_cast<int64_t>(ids.size());
    while (true) {
      int64_t t = argmax(last.data(), last.size());
      out.push_back(t);
      if (stream) show(out, shown);
      if (std::count(eos.begin(), eos.end(), t) || static_cast<int>(out.size()) >= max_new) break;
      last = step({t}, pos++);
    }
    if (stream) std::cout << "\n" << std::flush;
    return out;
  }

  int64_t context = 0, chunk = 0, vocab = 0;
  std::vector<int64_t> eos;

 private:
  // logits of the last position after feeding `ids` at positions start..
  std::vector<double> step(const std::vector<int64_t>& ids, int64_t start) {
    auto n = static_cast<executorch::aten::SizesType>(ids.size());
    std::vector<int64_t> positions(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) positions[i] = start + static_cast<int64_t>(i);
    auto input = executorch::extension::make_tensor_ptr({1, n}, std::vector<int64_t>(ids));
    auto cache_position = executorch::extension::make_tensor_ptr({n}, std::move(positions));
    auto out = program_.run({EValue(input), EValue(cache_position)});
    auto logits = to_doubles(out.at(0));
    return {logits.end() - vocab, logits.end()};
  }

  // print what the new tokens add; a byte-level token may end inside a character: hold it back
  void show(const std::vector<int64_t>& tokens, std::string& shown) {
    std::string text = tok_.decode(tokens);
    static const std::string kReplacement = "\xEF\xBF\xBD";
    if (text.size() >= 3 && text.compare(text.size() - 3, 3, kReplacement) == 0) return;
    if (text.compare(0, shown.size(), shown) == 0) std::cout << text.substr(shown.size()) << std::flush;
    shown = text;
  }

  Program& program_;
  const edgec::Tokenizer& tok_;
};

// ---- what each task prints

struct Runner {
  Options opt;
  edgec::Bundle bundle;
  std::unique_ptr<Program> program;
  std::unique_ptr<edgec::Tokenizer> tokenizer;

  bool is_text() const { return bundle.task == "feature-extraction"; }
  bool is_image() const { return bundle.task == "image-classification"; }
  bool is_lm() const { return bundle.task == "text-generation"; }

  void embed_texts() {
    Encoder enc(bundle, *program);
    for (const auto& text : opt.texts) {
      auto e = tokenizer->encode(text);
      auto feed = text_feed(e);
      std::vector<double> emb;
      for (int r = 0; r < opt.runs; ++r) emb = pooled(enc.run(feed), feed["attention_mask"]);
      if (opt.json) {
        std::cout << "{\"text\": " << edgec::json::quote(text) << ", \"embedding\": " << numbers(emb) << "}\n";
      } else {
        double norm = std::sqrt(std::inner_product(emb.begin(), emb.end(), emb.begin(), 0.0));
        std::cout << edgec::json::quote(text) << ": " << emb.size() << " dims, L2 norm " << norm << ", first values "
                  << numbers({emb.begin(), emb.begin() + std::min<size_t>(6, emb.size())}, 4) << "\n";
      }
    }
  }

  void classify_pixels() {
    Encoder enc(bundle, *program);
    const auto& spec = bundle.inputs.at(0);
    edgec::Array pixels = edgec::read_npy(opt.pixels);
    if (pixels.dtype != "f4")
      throw std::runtime_error(opt.pixels + " holds " + pixels.dtype + " values: give float32 pixels, preprocessed as "
                               "the manifest's 'preprocess' says");
    int64_t per_image = 1;
    for (size_t d = 1; d < spec.shape.size(); ++d) per_image *= spec.shape[d];
    if (pixels.numel() == 0 || pixels.numel() % per_image != 0)
      throw std::runtime_error(opt.pixels + " does not hold whole images of shape " + ints(spec.shape) +
                               ": give an array [N, C, H, W] or [C, H, W]");
    auto values = pixels.as_doubles();
    for (int64_t i = 0; i < pixels.numel() / per_image; ++i) {
      std::vector<double> image(values.begin() + i * per_image, values.begin() + (i + 1) * per_image);
      std::vector<double> logits;
      for (int r = 0; r < opt.runs; ++r) logits = enc.run({{spec.name, image}}).at(0);
      int64_t top = argmax(logits.data(), logits.size());
      if (opt.json) {
        std::cout << "{\"image\": " << i << ", \"top1\": " << top << ", \"label\": " << edgec::json::quote(bundle.label(top))
                  << ", \"logits\": " << numbers(logits) << "}\n";
      } else {
        auto p = softmax(logits);
        std::cout << "image " << i << ": " << bundle.label(top) << " (" << p[static_cast<size_t>(top)] << ")\n";
      }
    }
  }

  void generate_text() {
    Generator gen(*program, *tokenizer);
    auto prompt = tokenizer->encode(opt.prompt).ids;
    gen.check(prompt, opt.max_new_tokens);
    if (!opt.json) std::cout << opt.prompt << std::flush;
    auto t0 = Clock::now();
    auto tokens = gen.generate(prompt, opt.max_new_tokens, !opt.json);
    double ms = ms_since(t0);
    if (opt.json)
      std::cout << "{\"prompt_ids\": " << ints(prompt) << ", \"tokens\": " << ints(tokens)
                << ", \"text\": " << edgec::json::quote(tokenizer->decode(tokens)) << ", \"tokens_per_s\": "
                << tokens.size() / (ms / 1000.0) << "}\n";
  }

  // every golden sample again: the same tokens, outputs and greedy text as edgec measured
  bool selftest() {
    if (bundle.golden.empty())
      throw std::runtime_error(bundle.program_name + " has no golden vectors in the manifest: it was shipped unverified");
    auto golden = edgec::read_npz(bundle.golden);
    auto get = [&](const std::string& key) -> const edgec::Array& {
      auto it = golden.find(key);
      if (it == golden.end()) throw std::runtime_error(bundle.golden + " has no '" + key + "': re-export the bundle");
      return it->second;
    };
    const std::string rt = bundle.runtime;
    int failed = 0, samples = 0;
    auto report = [&](int i, const std::string& what, bool ok) {
      ++samples;
      failed += !ok;
      if (opt.json)
        std::cout << "{\"golden\": " << i << ", \"check\": " << edgec::json::quote(what) << ", \"ok\": "
                  << (ok ? "true" : "false") << "}\n";
      else
        std::cout << "golden " << i << ": " << what << (ok ? "  ok" : "  FAILED") << "\n";
    };
    if (is_lm()) {
      Generator gen(*program, *tokenizer);
      for (int i = 0; golden.count("tokens/" + rt + "/" + std::to_string(i)); ++i) {
        auto prompt = get("prompt/" + std::to_string(i)).as_ints();
        auto want = get("tokens/" + rt + "/" + std::to_string(i)).as_ints();
        auto got = gen.generate(prompt, static_cast<int>(want.size()), false);
        report(i, std::to_string(want.size()) + " greedy tokens " + (got == want ? "identical" : "differ"), got == want);
      }
    } else {
      Encoder enc(bundle, *program);
      int64_t n = get("input/" + bundle.inputs.at(0).name).shape.at(0);
      std::vector<std::string> texts;
      if (golden.count("texts")) texts = get("texts").as_strings();
      for (int64_t i = 0; i < n; ++i) {
        std::map<std::string, std::vector<double>> feed;
        for (const auto& spec : bundle.inputs) feed[spec.name] = get("input/" + spec.name).row(i).as_doubles();
        std::vector<std::vector<double>> want;
        for (const auto& spec : bundle.outputs) want.push_back(get("output/" + rt + "/" + spec.name).row(i).as_doubles());
        auto got = enc.run(feed);
        std::ostringstream what;
        bool ok = true;
        if (is_text() && i < static_cast<int64_t>(texts.size())) {
          auto e = tokenizer->encode(texts[static_cast<size_t>(i)]);
          bool same = std::vector<double>(e.ids.begin(), e.ids.end()) == feed["input_ids"];
          ok &= same;
          what << "tokens " << (same ? "identical" : "differ") << ", ";
        }
        if (is_text()) {
          double c = cosine(pooled(want, feed["attention_mask"]), pooled(got, feed["attention_mask"]));
          ok &= c >= 0.9999;
          what << "pooled cosine " << std::setprecision(8) << c;
        } else {
          int64_t a = argmax(want[0].data(), want[0].size()), b = argmax(got[0].data(), got[0].size());
          ok &= a == b;
          what << "top-1 " << b << " (golden " << a << ")";
        }
        what << ", max abs diff " << std::setprecision(3) << max_abs_diff(want[0], got[0]);
        report(static_cast<int>(i), what.str(), ok);
      }
    }
    if (samples == 0) throw std::runtime_error(bundle.golden + " holds no samples for " + rt + ": re-export the bundle");
    if (opt.json)
      std::cout << "{\"selftest\": " << (failed ? "\"failed\"" : "\"passed\"") << ", \"agree\": " << samples - failed
                << ", \"samples\": " << samples << "}\n";
    else
      std::cout << (failed ? "selftest failed: " : "selftest passed: ") << samples - failed << " of " << samples
                << " golden samples agree\n";
    return failed == 0;
  }

  void print_stats() {
    auto& ms = program->run_ms;
    std::vector<double> timed(ms.begin() + (ms.size() > 1 ? 1 : 0), ms.end());  // the first run warms up
    std::sort(timed.begin(), timed.end());
    double median = timed.empty() ? 0 : timed[timed.size() / 2];
    if (timed.size() % 2 == 0 && !timed.empty()) median = (timed[timed.size() / 2 - 1] + timed[timed.size() / 2]) / 2;
    size_t threads = executorch::extension::threadpool::get_threadpool()->get_thread_count();
    std::ostringstream line;
    line << std::fixed << std::setprecision(2);
    if (opt.json) {
      line << "{\"stats\": {\"load_ms\": " << program->load_ms << ", \"runs\": " << timed.size()
           << ", \"median_ms\": " << median << ", \"peak_rss_mb\": " << peak_rss_mb() << ", \"threads\": " << threads
           << "}}";
      std::cout << line.str() << "\n";
    } else {
      line << "loaded " << bundle.program_name << " in " << program->load_ms << " ms; ";
      if (ms.size() > 1)
        line << timed.size() << " timed forward calls (after one that warms up): median " << median << " ms; ";
      else
        line << "1 forward call (not warmed up): " << median << " ms; ";
      line << "peak memory " << peak_rss_mb() << " MB; " << threads << " threads";
      std::cerr << line.str() << "\n";
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  try {
    Options opt = parse_args(argc, argv);
    g_verbose = opt.verbose;
    executorch::runtime::register_pal(executorch::runtime::PalImpl::create(emit_log, __FILE__));
    executorch::runtime::runtime_init();
    if (opt.threads) executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(opt.threads);
    Runner r{opt, edgec::Bundle::open(opt.bundle, opt.artifact), nullptr, nullptr};
    if (!r.bundle.tokenizer.empty()) r.tokenizer = std::make_unique<edgec::Tokenizer>(edgec::Tokenizer::from_file(r.bundle.tokenizer));
    r.program = std::make_unique<Program>(r.bundle.program, r.bundle.program_name);
    bool ok = true;
    if (opt.selftest) ok = r.selftest();
    else if (r.is_text() && !opt.texts.empty()) r.embed_texts();
    else if (r.is_image() && !opt.pixels.empty()) r.classify_pixels();
    else if (r.is_lm() && !opt.prompt.empty()) r.generate_text();
    else if (r.is_text()) throw UsageError("this bundle embeds text: give --text \"...\" or --texts FILE (or --selftest)");
    else if (r.is_image()) throw UsageError("this bundle classifies images: give --pixels FILE.npy (or --selftest)");
    else if (r.is_lm()) throw UsageError("this bundle holds a language model: give --prompt \"...\" (or --selftest)");
    else throw std::runtime_error("the bundle's task '" + r.bundle.task + "' is not one this runner knows");
    r.print_stats();
    return ok ? 0 : 1;
  } catch (const UsageError& e) {
    std::cerr << "edgec-run: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "edgec-run: " << e.what() << "\n";
    return 1;
  }
}

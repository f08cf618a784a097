// Included at the end of every kernel file built into the emulated device (device.cpp): each
// kernel registers a binder that copies a launch's arguments out of `void** params` (the driver
// API's convention) into a call of the kernel.
#pragma once
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

using EmuCall = std::function<void()>;
using EmuBinder = EmuCall (*)(void** params);
void emu_register(const char* name, EmuBinder bind);

// A pointer parameter arrives as a 64-bit device address (which here is a host address).
template <class T> T emu_arg(void* p) {
    if constexpr (std::is_pointer_v<T>) {
        unsigned long long a;
        std::memcpy(&a, p, sizeof a);
        return reinterpret_cast<T>(static_cast<uintptr_t>(a));
    } else {
        T v;
        std::memcpy(&v, p, sizeof v);
        return v;
    }
}

template <class... A, size_t... I>
EmuCall emu_bind_at(void (*f)(A...), void** p, std::index_sequence<I...>) {
    auto args = std::make_tuple(emu_arg<std::remove_cv_t<A>>(p[I])...);
    return [f, args]() { std::apply(f, args); };
}

template <auto F> EmuCall emu_bind(void** p) {
    return [&]<class... A>(void (*f)(A...)) {
        return emu_bind_at(f, p, std::index_sequence_for<A...>{});
    }(F);
}

struct EmuRegister {
    EmuRegister(const char* name, EmuBinder bind) { emu_register(name, bind); }
};

#define EMU_KERNEL(name) static EmuRegister emu_register_##name(#name, &emu_bind<&name>);

/*
 * Fuzz target for the protection core: any bytes drive ProtCore through its whole public API.
 *
 * The input is read as a little program: relay and element counts, raw settings structs (any
 * bit pattern, NaN and infinities included: the core must refuse what it cannot use), then
 * operations (step with raw samples and quality flags, manual trip and close, state snapshots
 * written back raw, curve evaluations) until the bytes run out. Built with libFuzzer and
 * AddressSanitizer + UndefinedBehaviorSanitizer (clang), or with gcc and the small random
 * driver below (-DSTANDALONE_MAIN). Besides memory and UB errors it checks the API's promises:
 * every status is one of ProtStatus, at most `capacity` events are written, events name a
 * relay that exists.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../stima_protection.h"

typedef struct {
    const uint8_t* data;
    size_t size;
    size_t pos;
} Reader;

static int Reader_take(Reader* self, void* out, size_t n)
{
    if (self->pos + n > self->size) {
        return 0;
    }
    memcpy(out, self->data + self->pos, n);
    self->pos += n;
    return 1;
}

static uint8_t Reader_byte(Reader* self)
{
    uint8_t b = 0;
    (void) Reader_take(self, &b, 1);
    return b;
}

static void check_status(ProtStatus status)
{
    if (status != PROT_OK && status != PROT_ERR_ARGUMENT && status != PROT_ERR_NO_MEMORY
        && status != PROT_ERR_FULL && status != PROT_ERR_STATE) {
        fprintf(stderr, "unknown status %d\n", (int) status);
        abort();
    }
}

static void check_events(const ProtEvent* events, int32_t count, int32_t capacity, int32_t relays)
{
    if (count < 0 || count > capacity) {
        fprintf(stderr, "event count %d outside 0..%d\n", (int) count, (int) capacity);
        abort();
    }
    for (int32_t i = 0; i < count; i++) {
        if (events[i].relay < 0 || events[i].relay >= relays) {
            fprintf(stderr, "event for relay %d of %d\n", (int) events[i].relay, (int) relays);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    Reader in = {data, size, 0};
#ifdef FUZZ_CANARY
    /* A planted bug, to show that the harness reports one: a stack overflow behind a magic header. */
    if (size > 3 && data[0] == 0x42 && data[1] == 0x24) {
        volatile char planted[4];
        planted[data[2]] = 1;
        (void) planted[0];
    }
#endif
    int32_t relays = 1 + (Reader_byte(&in) % 4);
    int32_t capacity_elements = Reader_byte(&in) % 12;
    ProtCore core = NULL;
    ProtStatus status = ProtCore_create(relays, capacity_elements, &core);
    check_status(status);
    if (status != PROT_OK) {
        return 0;
    }
    for (int32_t r = 0; r < relays; r++) {
        ProtRelaySettings rs;
        memset(&rs, 0, sizeof rs);
        rs.nominal_kv = 11.0;
        rs.shots = 2;
        rs.dead_time_s[0] = 0.5;
        rs.dead_time_s[1] = 5.0;
        rs.reclaim_s = 10.0;
        if (Reader_byte(&in) & 1) {
            (void) Reader_take(&in, &rs, sizeof rs);
        }
        check_status(ProtCore_setRelay(core, r, &rs));
    }
    int32_t elements = 0;
    int32_t n_elements = Reader_byte(&in) % 10;
    for (int32_t e = 0; e < n_elements; e++) {
        ProtElementSettings es;
        memset(&es, 0, sizeof es);
        es.relay = Reader_byte(&in) % (relays + 1);
        es.kind = Reader_byte(&in) % 10;
        es.pickup = 400.0;
        es.dropout_ratio = 0.95;
        es.tms = 0.1;
        es.fast_tms = 0.05;
        es.start_factor = 1.0;
        es.m_max = 20.0;
        es.tau_s = 600.0;
        es.cooling_tau_s = 1800.0;
        es.reset_theta = 0.9;
        if (Reader_byte(&in) & 1) {
            (void) Reader_take(&in, &es, sizeof es);
        }
        int32_t index = -1;
        status = ProtCore_addElement(core, &es, &index);
        check_status(status);
        if (status == PROT_OK) {
            elements = index + 1;
        }
    }
    double now = 0.0;
    double samples[4 * PROT_CHANNELS];
    uint8_t quality[4 * PROT_CHANNELS];
    ProtEvent events[16];
    for (int op = 0; op < 64 && in.pos < in.size; op++) {
        uint8_t code = Reader_byte(&in);
        int32_t count = -1;
        int32_t capacity = code >> 4;  /* 0..15: small buffers exercise PROT_ERR_FULL */
        int32_t relay = Reader_byte(&in) % (relays + 1);  /* one past the end: refused */
        switch (code % 7) {
        case 0:
        case 1: {
            double dt = 0.0;
            (void) Reader_take(&in, &dt, sizeof dt);
            if (code & 8) {
                now += dt;  /* any double: NaN, negative, huge */
            } else {
                now += (double) (Reader_byte(&in)) * 0.01;
            }
            memset(samples, 0, sizeof samples);
            memset(quality, 1, sizeof quality);
            (void) Reader_take(&in, samples, sizeof(double) * (size_t) (relays * PROT_CHANNELS));
            (void) Reader_take(&in, quality, (size_t) (relays * PROT_CHANNELS));
            status = ProtCore_step(core, now, samples, quality, events, capacity, &count);
            check_status(status);
            if (status == PROT_OK || status == PROT_ERR_FULL) {
                check_events(events, count, capacity, relays);
            }
            break;
        }
        case 2:
            status = ProtCore_manualTrip(core, relay, now, events, capacity, &count);
            check_status(status);
            if (status == PROT_OK || status == PROT_ERR_FULL) {
                check_events(events, count, capacity, relays);
            }
            break;
        case 3:
            status = ProtCore_manualClose(core, relay, now, code & 32, events, capacity, &count);
            check_status(status);
            if (status == PROT_OK || status == PROT_ERR_FULL) {
                check_events(events, count, capacity, relays);
            }
            break;
        case 4: {
            ProtRelayState state;
            status = ProtCore_getRelayState(core, relay, &state);
            check_status(status);
            if (status == PROT_OK) {
                (void) Reader_take(&in, &state, sizeof state / 2);  /* partly overwritten by raw bytes */
                check_status(ProtCore_setRelayState(core, relay, &state));
            }
            break;
        }
        case 5: {
            ProtElementState state;
            int32_t element = elements ? (int32_t) (Reader_byte(&in) % (elements + 1)) : 0;
            status = ProtCore_getElementState(core, element, &state);
            check_status(status);
            if (status == PROT_OK) {
                (void) Reader_take(&in, &state, sizeof state / 2);
                check_status(ProtCore_setElementState(core, element, &state));
            }
            break;
        }
        default: {
            double tms = 0.1, m = 2.0;
            (void) Reader_take(&in, &tms, sizeof tms);
            (void) Reader_take(&in, &m, sizeof m);
            (void) ProtCurve_operateTime((int32_t) (code % 9), tms, m);
            break;
        }
        }
    }
    ProtCore_destroy(core);
    return 0;
}

#ifdef STANDALONE_MAIN
/* Without libFuzzer: random inputs of random length, deterministic for a seed. */
int main(int argc, char** argv)
{
    long runs = argc > 1 ? atol(argv[1]) : 100000;
    unsigned seed = argc > 2 ? (unsigned) atol(argv[2]) : 1u;
    static uint8_t buffer[4096];
    srand(seed);
    for (long n = 0; n < runs; n++) {
        size_t size = (size_t) (rand() % (int) sizeof buffer);
        for (size_t i = 0; i < size; i++) {
            buffer[i] = (uint8_t) rand();
        }
        LLVMFuzzerTestOneInput(buffer, size);
    }
    printf("Done %ld runs\n", runs);
    return 0;
}
#endif

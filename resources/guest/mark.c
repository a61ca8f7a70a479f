/* ember-mark: signal Ember's boot timer from the guest by writing 123 to I/O
 * port 0x3f0 (`ember run --boot-timer` logs when it arrives). Needs root for
 * ioperm(2); exits 1 if that fails. No libc, so the binary is a few KiB and
 * costs the initramfs (and the boot being measured) next to nothing.
 * Build: gcc -O2 -static -nostdlib -s -o ember-mark mark.c */
#define SYS_ioperm 173
#define SYS_exit 60

static long syscall3(long n, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return ret;
}

void _start(void)
{
    long err = syscall3(SYS_ioperm, 0x3f0, 1, 1);
    if (err == 0)
        __asm__ volatile("outb %0, %1" : : "a"((unsigned char)123), "Nd"((unsigned short)0x3f0));
    syscall3(SYS_exit, err != 0, 0, 0);
    for (;;) {
    }
}

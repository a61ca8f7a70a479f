/*
 * Tiny test guests for Ember: a few instructions of port I/O that run directly on /dev/kvm.
 * One source, built several ways (see build.sh):
 *   ACTION_HELLO   print "EMBER-TINY entry=<pvh|lm64> cmdline=<kernel command line>", reset
 *   ACTION_ECHO    echo serial input until a newline, print "EMBER-TINY echo-done", reset
 *   ACTION_FAULT   load an empty IDT and trap: triple fault
 *   ACTION_HALT    disable interrupts and halt forever (for stop/signal tests)
 * Entry: the PVH note (32-bit protected mode, %ebx = hvm_start_info) when linked with pvh.ld,
 * the ELF entry in long mode (%rsi = boot_params) when linked with lm64.ld.
 */

#define COM1 0x3f8
#define LSR (COM1 + 5)

/* Print the NUL-terminated string at %esi/%rsi. Mode-neutral instructions only. */
.macro PRINT_STRING
1:  lodsb
    test %al, %al
    jz 3f
    mov %al, %ah
2:  mov $LSR, %dx
    inb %dx, %al
    test $0x20, %al
    jz 2b
    mov $COM1, %dx
    mov %ah, %al
    outb %al, %dx
    jmp 1b
3:
.endm

.macro BODY
#if defined(ACTION_HELLO)
    PRINT_STRING                      /* entry banner, %esi set by the caller */
    mov %edi, %esi                    /* command line */
    PRINT_STRING
    lea_newline
    PRINT_STRING
#elif defined(ACTION_ECHO)
    lea_ready
    PRINT_STRING
4:  mov $LSR, %dx
    inb %dx, %al
    test $0x01, %al
    jz 4b
    mov $COM1, %dx
    inb %dx, %al
    outb %al, %dx
    cmp $'\n', %al
    jne 4b
    lea_done
    PRINT_STRING
#elif defined(ACTION_FAULT)
    lidt zero_idt_desc
    ud2
#elif defined(ACTION_HALT)
    cli
5:  hlt
    jmp 5b
#endif
    mov $0xfe, %al                    /* i8042: pulse the CPU reset line */
    outb %al, $0x64
6:  hlt
    jmp 6b
.endm

.section .text
.code32
.globl pvh_start
pvh_start:
    mov $0x8ff0, %esp
    mov 24(%ebx), %edi                /* hvm_start_info.cmdline_paddr (low half) */
    mov $banner_pvh, %esi
    .macro lea_newline
    mov $newline, %esi
    .endm
    .macro lea_ready
    mov $ready, %esi
    .endm
    .macro lea_done
    mov $done, %esi
    .endm
    BODY

.code64
.globl start64
start64:
    mov 0x228(%rsi), %edi             /* boot_params.hdr.cmd_line_ptr */
    mov $banner_lm64, %esi
    BODY

.section .rodata
banner_pvh:  .asciz "EMBER-TINY entry=pvh cmdline="
banner_lm64: .asciz "EMBER-TINY entry=lm64 cmdline="
newline:     .asciz "\n"
ready:       .asciz "EMBER-TINY echo-ready\n"
done:        .asciz "EMBER-TINY echo-done\n"
.align 8
zero_idt_desc: .word 0
               .quad 0

/* PVH entry point note: XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen". */
.section .note.Xen, "a"
.align 4
.long 4
.long 4
.long 18
.asciz "Xen"
.long pvh_start

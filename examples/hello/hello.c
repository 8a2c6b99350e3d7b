#include <stdio.h>
int main(void) {
  puts("hello from an ephrun build");
  return 0;
}
